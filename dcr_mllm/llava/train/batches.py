"""Batches of LLaVA conversation data: LLaVA-1.5's modality/length-grouped sampler
(``llava/train/llava_trainer.py``) as per-rank micro-batches, and their padded collation."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from dcr_mllm.data.position import ReadPosition
from dcr_mllm.errors import DcrError
from dcr_mllm.llava.train.data import IGNORE_INDEX, ConversationData, Sample


def split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """LLaVA's ``split_to_even_chunks`` (llava/train/llava_trainer.py:38-57) for full megabatches:
    each index, longest first, joins the chunk with the least total length that still has room."""
    per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def epoch_steps(images: int, texts: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Micro-batch steps per epoch of ``GroupedBatches`` over ``images`` records with an image and
    ``texts`` without: whole global batches of each modality (the same on every rank)."""
    megabatch = batch_size * world_size * grad_accum
    return (images // megabatch + texts // megabatch) * grad_accum


class GroupedBatches(IterableDataset):
    """Per-rank micro-batches, planned as LLaVA's ``LengthGroupedSampler`` with
    ``group_by_modality_length`` (llava/train/llava_trainer.py:60-96), the same plan on every rank.

    Each epoch, the records with images and the text-only ones are each shuffled and cut into
    megabatches of one global batch (``batch_size * world_size * grad_accum``). With
    ``group_by_length``, a megabatch is sorted longest first and split into its micro-batches so
    that their total lengths are balanced; the megabatches are then shuffled. Micro-batch ``c`` of
    a megabatch goes to rank ``c % world_size`` at accumulation step ``c // world_size``, as
    accelerate shards LLaVA's sampler. Where LLaVA ends an epoch with one mixed batch of the two
    modalities' remainders, this plan keeps those remainders only if they are whole global batches:
    every rank must run the vision tower in the same steps (ZeRO-3 gathers its weights collectively).
    Without ``group_by_length`` the megabatches are split in drawn order (LLaVA samples at random).
    """

    def __init__(
        self,
        data: ConversationData,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pad_token_id: int = 0,
        group_by_length: bool = True,
        grad_accum: int = 1,
    ):
        self.data, self.batch_size, self.rank, self.world_size = data, batch_size, rank, world_size
        self.seed, self.pad_token_id, self.group_by_length, self.grad_accum = (
            seed,
            pad_token_id,
            group_by_length,
            grad_accum,
        )
        self.epoch = 0
        self.position = ReadPosition()  # lets a resumed run pass over batches without loading them
        if self.steps_per_epoch() == 0:
            raise DcrError(
                f"{len(data)} records give no full global batch of {batch_size} x {world_size} x {grad_accum} "
                "(micro batch x ranks x accumulation); add data or lower micro_batch_size"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def megabatch_size(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    def epoch_seed(self) -> int:
        """The seed of this epoch's torch generator (the plan draws three permutations from it, in LLaVA's order)."""
        return random.Random(f"{self.seed}-{self.epoch}").getrandbits(63)

    def _megabatches(self, indices: list[int], lengths: list[int], generator: torch.Generator) -> list[list[list[int]]]:
        """LLaVA's ``get_length_grouped_indices`` (llava_trainer.py:88-96) over ``indices``: shuffled,
        cut into megabatches, each split into its micro-batches (a partial last one stays whole)."""
        size, chunks = self.megabatch_size, self.world_size * self.grad_accum
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        megabatches = []
        for start in range(0, len(order), size):
            megabatch = order[start : start + size]
            if len(megabatch) < size:
                megabatches.append([megabatch])
            elif self.group_by_length:
                megabatches.append(
                    split_to_even_chunks(sorted(megabatch, key=lengths.__getitem__, reverse=True), lengths, chunks)
                )
            else:
                megabatches.append([megabatch[c * self.batch_size : (c + 1) * self.batch_size] for c in range(chunks)])
        return megabatches

    def plan(self) -> list[list[list[int]]]:
        """Per step, the micro-batch of each rank: ``plan()[step][rank]``."""
        generator = torch.Generator().manual_seed(self.epoch_seed())
        lengths = [self.data.length(i) for i in range(len(self.data))]
        images = [i for i in range(len(self.data)) if self.data.has_image(i)]
        texts = [i for i in range(len(self.data)) if not self.data.has_image(i)]
        if not images or not texts:  # one modality: one shuffle, no reordering of megabatches
            megabatches = self._megabatches(images or texts, lengths, generator)
        else:  # llava_trainer.py:66-85: the last megabatch of each modality is held back, the rest shuffled
            image_batches = self._megabatches(images, lengths, generator)
            text_batches = self._megabatches(texts, lengths, generator)
            rest = image_batches[:-1] + text_batches[:-1]
            megabatches = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
            megabatches += [image_batches[-1], text_batches[-1]]
        megabatches = [m for m in megabatches if sum(map(len, m)) == self.megabatch_size]  # whole global batches only
        world = self.world_size
        return [megabatch[k * world : (k + 1) * world] for megabatch in megabatches for k in range(self.grad_accum)]

    def steps_per_epoch(self) -> int:
        """Micro-batch steps per epoch (the same on every rank)."""
        images = sum(self.data.has_image(i) for i in range(len(self.data)))
        return epoch_steps(images, len(self.data) - images, self.batch_size, self.world_size, self.grad_accum)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        reader, skip = self.position.begin(worker_id, num_workers)
        for step in self.plan()[reader::num_workers]:
            self.position.done += 1
            if self.position.done > skip:  # a resumed reader loads nothing before its position
                yield self.collate([self.data[i] for i in step[self.rank]])

    def collate(self, samples: list[Sample | None]) -> dict:
        return collate(samples, self.pad_token_id)


def collate(samples: list[Sample | None], pad_token_id: int) -> dict:
    """A padded micro-batch of samples (None: a record skipped as too long)."""
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept) + sum(s.skipped for s in kept)
    if not kept:  # every rank must run this step; an empty micro-batch cannot
        raise DcrError("a whole micro-batch was too long for model_max_length; raise model_max_length")
    longest = max(len(s.input_ids) for s in kept)
    input_ids = torch.full((len(kept), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(kept), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(kept), longest), dtype=torch.long)
    for row, sample in enumerate(kept):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention_mask[row, :n] = 1
    images = [s.pixel_values for s in kept if s.pixel_values is not None]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack(images) if images else None,
        "skipped": skipped,
    }
