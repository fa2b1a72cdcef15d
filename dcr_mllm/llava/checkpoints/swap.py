"""Swap a vision tower into an existing LLaVA checkpoint, shard by shard, and verify the result.

Users hold LLaVA checkpoints of tens of GB and want to try an enhanced tower in them without
retraining and without loading the model. The steps: read (``llava.checkpoints.checkpoint``,
``llava.checkpoints.formats.read_checkpoint``), check (the format's ``check``, over ``llava.checkpoints.compat``), plan
(``plan_swap``), write (``write_plan``), verify (``verify``), report (``SwapReport``). Each format
(``llava.checkpoints.formats``: llava-hf LLaVA-1.5, -NeXT and -OneVision, original LLaVA-1.5 and 1.6) says
where its tower is, what must fit and which files change; every other tensor is copied as raw
bytes (see ``shards``), the tower's cast to the checkpoint's dtype. The tower is checked against the checkpoint before anything is written; DST is
built under a temporary name, verified, and only then renamed into place
(``dcr_mllm.io.atomic_dir``), so a failure leaves neither DST nor a temporary directory behind.

Verification reads DST back once and compares every tensor's digest with the one recorded while
writing it (for a copied tensor, SRC's), then runs the format's own check.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir, scratch_dir
from dcr_mllm.llava.checkpoints.checkpoint import TOWER_PREFIX, Checkpoint, Tower, read_tower, write_json
from dcr_mllm.llava.checkpoints.formats import format_of, read_checkpoint
from dcr_mllm.llava.checkpoints.formats.llava_hf import PREFIXES as LLAVA_HF_PREFIXES
from dcr_mllm.llava.shards import (
    DTYPES,
    INDEX_NAME,
    Cast,
    Source,
    StoredTensor,
    convert_pickled_checkpoint,
    describe,
    human_size,
    nbytes,
    numel,
    parallel,
    pickled_weight_files,
    read_header,
    same_file,
    write_shard,
)


@dataclass
class SwapPlan:
    """Everything a swap will write, decided (and checked) before anything is written."""

    checkpoint: Checkpoint
    tower: Tower
    layout: dict[str, list[tuple[str, Source]]]  # output safetensors file -> tensors in order
    tower_tensors: dict[str, Source]  # output key -> the tower tensor it must equal
    dropped: list[str]  # the old tower's keys, when the family changes and the key set with it
    config: dict
    json_files: dict[str, dict]  # processor files rewritten
    changes: list[str]
    notes: list[str]


def plan_swap(
    src: str | Path, tower: str | Path, dst: str | Path, allow_family_change: bool = False, allow_pickle: bool = False
) -> SwapPlan:
    """Check the tower against the checkpoint and decide every tensor and file of DST; writes nothing."""
    checkpoint = read_checkpoint(src, allow_pickle)
    new_tower = read_tower(tower)
    fit = format_of(checkpoint).check(checkpoint, new_tower, allow_family_change)
    if fit.problems:
        raise DcrError(fit.refusal(tower, src))
    layout, tower_tensors = _layout(checkpoint, new_tower, fit.family_change)
    changes = format_of(checkpoint).changes(checkpoint, new_tower, Path(dst), fit.family_change)
    dropped = list(checkpoint.tower_keys()) if fit.family_change else []
    return SwapPlan(
        checkpoint,
        new_tower,
        layout,
        tower_tensors,
        dropped,
        changes.config,
        changes.json_files,
        changes.lines,
        fit.notes + changes.notes,
    )


def _layout(
    checkpoint: Checkpoint, tower: Tower, family_change: bool
) -> tuple[dict[str, list[tuple[str, Source]]], dict[str, Source]]:
    """Each output shard's tensors in the source's order, and which of them must equal the tower's.

    Within a family, each stored tower tensor is replaced in place (cast to its dtype). Across
    families the key sets differ: the old tower's tensors are dropped and the new tower's, named
    in the checkpoint's key style, take the place of the first of them.
    """
    tower_keys = checkpoint.tower_keys()
    incoming = {}
    if family_change:
        first = next(iter(tower_keys))
        prefix = next(p for p in LLAVA_HF_PREFIXES if first.startswith(p))
        keeps_level = first[len(prefix) :].startswith(TOWER_PREFIX)
        dtype = DTYPES[checkpoint.tensors[first].dtype]
        incoming = {
            prefix + (key if keeps_level else key[len(TOWER_PREFIX) :]): _as_dtype(source, dtype)
            for key, source in tower.tensors.items()
        }
    layout, tower_tensors = {}, {}
    for shard, tensors in checkpoint.shards.items():
        items = []
        for key, stored in sorted(tensors.items(), key=lambda kv: kv[1].start):
            tower_key = tower_keys.get(key)
            if tower_key is None or (
                not family_change and tower_key not in tower.tensors
            ):  # a position_ids buffer stays
                items.append((key, stored))
            elif family_change:
                items += incoming.items()
                tower_tensors.update(incoming)
                incoming = {}
            else:
                source = _as_dtype(tower.tensors[tower_key], DTYPES[stored.dtype])
                items.append((key, source))
                tower_tensors[key] = source
        layout[shard] = items
    return layout, tower_tensors


def _as_dtype(stored: StoredTensor, dtype: torch.dtype) -> Source:
    return stored if DTYPES[stored.dtype] == dtype else Cast(stored, dtype)


@dataclass
class SwapReport:
    """What a swap did (or, for a dry run, would do); ``lines()`` is the one-screen summary."""

    plan: SwapPlan
    src: Path
    dst: Path
    dry_run: bool
    verified: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # SRC's .bin shards, read as safetensors ones

    def lines(self) -> list[str]:
        plan, checkpoint, spec = self.plan, self.plan.checkpoint, self.plan.tower.spec
        replaced = [(k, s) for items in plan.layout.values() for k, s in items if k in plan.tower_tensors]
        copied = [s for items in plan.layout.values() for k, s in items if k not in plan.tower_tensors]
        replaced_bytes = sum(nbytes(s) for _, s in replaced)
        dtypes = sorted({str(s.dtype).removeprefix("torch.") for _, s in replaced if isinstance(s, Cast)})
        cast = f", cast to {'/'.join(dtypes)}" if dtypes else ""
        head = f"swap-tower {self.src} -> {self.dst}" + ("   (dry run: nothing written)" if self.dry_run else "")
        action = "replace" if not self.dry_run else "would replace"
        if plan.dropped:
            action += f" the {len(plan.dropped)} old tower tensors with"
        lines = [
            head,
            f"  checkpoint  {checkpoint.format}, {len(checkpoint.shards)} safetensors file(s), {human_size(checkpoint.nbytes)}",
            (
                f"  tower       {plan.tower.path} ({spec.family}, {spec.num_layers} layers, width {spec.hidden_size}, "
                f"{spec.image_size} px / patch {spec.patch_size})"
            ),
            (
                f"  tensors     {action} {len(replaced)} vision-tower tensors ({human_size(replaced_bytes)}{cast}); "
                f"copy {len(copied)} others byte for byte ({human_size(sum(s.nbytes for s in copied))})"
            ),
        ]
        if self.converted:
            lines.append(
                f"  files       {len(self.converted)} .bin shard(s) of SRC read with the restricted unpickler and written as "
                "safetensors shards with an index"
            )
        if checkpoint.format == "original":
            bins = f"; {len(checkpoint.bin_files)} .bin file(s) copied as they are" if checkpoint.bin_files else ""
            lines.append(f"  files       tower directory copied to {self.dst / 'vision_tower'}{bins}")
        lines += [
            f"  {'config' if i == 0 else '':10}  {change}" for i, change in enumerate(plan.changes or ["unchanged"])
        ]
        lines += [f"  {'verified' if i == 0 else '':10}  {check}" for i, check in enumerate(self.verified)]
        lines += [f"  {note}" for note in plan.notes]
        return lines


def check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse a DST that exists (without force) or that overlaps SRC, which is never modified."""
    if not src.is_dir():
        raise DcrError(f"LLaVA checkpoint {src}: no such directory")
    real_src, real_dst = src.resolve(), dst.expanduser().resolve()
    if real_dst == real_src or real_dst.is_relative_to(real_src) or real_src.is_relative_to(real_dst):
        raise DcrError(
            f"output {dst} overlaps the input {src}; the input is never modified: choose another output directory"
        )
    if dst.exists() and not force:
        raise DcrError(f"output {dst} already exists; pass --force to replace it")


def _copy_side_files(src: Path, out: Path, skip: set[str]) -> None:
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, symlinks=True)
        else:
            shutil.copy2(item, out / item.name)


def write_plan(plan: SwapPlan, out: Path) -> dict[str, list[bytes]]:
    """Write every file of DST into ``out``; returns each shard's tensor digests (see ``write_shard``)."""
    checkpoint = plan.checkpoint
    totals = {"total_size": 0, "total_parameters": 0}
    weight_map = {}
    shards = list(plan.layout)
    digests = dict(
        zip(
            shards,
            parallel(
                lambda shard: write_shard(out / shard, plan.layout[shard], checkpoint.shard_metadata[shard]), shards
            ),
        )
    )
    for shard, items in plan.layout.items():
        for key, source in items:
            totals["total_size"] += nbytes(source)
            totals["total_parameters"] += numel(source.shape)
            weight_map[key] = shard
    if checkpoint.index is not None:
        metadata = dict(checkpoint.index.get("metadata") or {})
        metadata.update({k: v for k, v in totals.items() if k in metadata or k == "total_size"})
        write_json(out / INDEX_NAME, {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))})
    written = {
        *plan.layout,
        INDEX_NAME,
        "config.json",
        *plan.json_files,
        *format_of(checkpoint).write_extra(plan.tower, out),
    }
    if plan.config == checkpoint.config:
        shutil.copy2(checkpoint.path / "config.json", out / "config.json")
    else:
        write_json(out / "config.json", plan.config)
    for name, data in plan.json_files.items():
        write_json(out / name, data)
    _copy_side_files(checkpoint.path, out, written)
    return digests


def verify(plan: SwapPlan, out: Path, digests: dict[str, list[bytes]]) -> list[str]:
    """Read DST back: copies byte-identical to SRC, tower tensors equal to the tower's (by the
    digests ``write_plan`` recorded), and the format's own check (llava-hf: transformers' model class of
    the family accepts every key and shape; original: the tower copy)."""
    counts = parallel(lambda shard: _verify_shard(plan, out, shard, digests[shard]), list(plan.layout))
    identical, equal = sum(c[0] for c in counts), sum(c[1] for c in counts)
    checks = [f"{identical} tensors byte-identical to SRC, {equal} equal to the tower's (xxh3-128 of every tensor)"]
    for name in plan.checkpoint.bin_files:
        if not same_file(plan.checkpoint.path / name, out / name):
            raise DcrError(f"verification failed: {out / name} differs from {plan.checkpoint.path / name}")
    if plan.checkpoint.bin_files:
        checks.append(f"{len(plan.checkpoint.bin_files)} .bin file(s) byte-identical to SRC")
    checks.append(format_of(plan.checkpoint).verify_extra(plan.tower, out))
    return checks


def _verify_shard(plan: SwapPlan, out: Path, shard: str, digests: list[bytes]) -> tuple[int, int]:
    """(tensors byte-identical to SRC, tensors equal to the tower's) in one written shard."""
    items = plan.layout[shard]
    written, _ = read_header(out / shard)
    if [(key, stored.dtype, stored.shape) for key, stored in written.items()] != [
        (key, *describe(source)[:2]) for key, source in items
    ]:
        raise DcrError(f"verification failed: {out / shard} does not hold the planned tensors")
    for (key, _), digest in zip(items, digests):
        if written[key].digest() != digest:
            origin = "the tower's tensor" if key in plan.tower_tensors else plan.checkpoint.path
            raise DcrError(f"verification failed: {key} in {shard} differs from {origin}")
    equal = sum(key in plan.tower_tensors for key, _ in items)
    return len(items) - equal, equal


def swap_tower(
    src: str | Path,
    tower: str | Path,
    dst: str | Path,
    *,
    force: bool = False,
    dry_run: bool = False,
    allow_family_change: bool = False,
    allow_pickle: bool = False,
) -> SwapReport:
    """Write SRC with TOWER's vision encoder to DST; see the module docstring. Returns the report.

    Args:
        src: the LLaVA checkpoint directory (any format of ``llava.checkpoints.formats``); never modified.
        tower: the vision tower directory swapped in.
        dst: the checkpoint directory to write; must not overlap ``src``.
        force: replace an existing ``dst`` once the new one is written and verified.
        dry_run: check and report what would change; write nothing.
        allow_family_change: allow a tower of another family (SigLIP for CLIP or back); the projector must then be retrained.
        allow_pickle: read .bin shards of ``src`` with the restricted unpickler (written as safetensors).
    """
    src, dst = Path(src), Path(dst)
    check_destination(src, dst, force)
    with contextlib.ExitStack() as stack:
        readable, converted = src, []
        if allow_pickle and pickled_weight_files(src):  # .bin shards: read as safetensors ones, written as safetensors
            read_checkpoint(src, allow_pickle)  # its format and files checked before the shards are converted
            readable = stack.enter_context(scratch_dir(dst))
            converted = convert_pickled_checkpoint(src, readable)
        plan = plan_swap(readable, tower, dst, allow_family_change, allow_pickle)
        report = SwapReport(plan, src, dst, dry_run, converted=converted)
        if dry_run:
            return report
        with atomic_dir(dst) as tmp:
            format_of(plan.checkpoint).before_write()
            digests = write_plan(plan, tmp)
            report.verified = verify(plan, tmp, digests)
    return report
