"""Convert an original LLaVA checkpoint (``mm_vision_tower``) to llava-hf, streaming, as transformers does.

LLaVA-1.5 (``mm_patch_merge_type: flat``) becomes ``LlavaForConditionalGeneration``, LLaVA-1.6
(``spatial_unpad`` with ``image_aspect_ratio: anyres``) ``LlavaNextForConditionalGeneration``; the
result matches transformers' own ``convert_llava_weights_to_hf.py`` (LLaVA-1.6:
``convert_llava_next_weights_to_hf.py``) in what makes the two formats interchangeable:

- **key mapping**: its ``KEYS_TO_MODIFY_MAPPING``, applied in the same order (``model.*`` ->
  ``language_model.model.*``, ``lm_head`` -> ``language_model.lm_head``, ``model.mm_projector.{0,2}``
  -> ``multi_modal_projector.linear_{1,2}``, stored tower tensors -> ``vision_tower.vision_model.*``),
  the same dropped keys (``*.inv_freq``, ``model.image_newline``) and ``lm_head`` cloned from the
  embeddings when the checkpoint ties them; LLaVA-1.6 keeps ``model.image_newline`` as ``image_newline``
  and its ``image_grid_pinpoints`` (config and ``LlavaNextImageProcessor``);
- **added tokens**: ``<image>`` (special, not normalised), then ``<pad>`` as the pad token;
- **padded vocabulary**: ``vocab_size + 2`` rounded up to a multiple of 64, the new rows of both
  the embeddings and ``lm_head`` drawn from a normal distribution with the old embeddings' mean
  and 1e-5 times their covariance (seeded here, so a conversion can be repeated).

The processor also carries LLaVA-1.5's ``vicuna_v1`` chat template, so chat front ends (lmms-eval's
``llava_hf``) prompt the model as it was trained, and a ``LlavaImageProcessor`` that pads images to a
square of the mean colour when the checkpoint says ``image_aspect_ratio: pad`` (LLaVA-1.5 does), so
the model sees the pixels it was trained on (``convert_config`` builds the processor and the config).

Tower tensors the checkpoint does not store come from the ``mm_vision_tower`` directory, as
transformers' script loads the tower into the model before converting. Tensors are streamed
file by file (see ``shards``); only the embeddings and ``lm_head`` are held in memory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.llava.build import IMAGE_TOKEN, PAD_TOKEN
from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower, read_tower, write_json
from dcr_mllm.llava.checkpoints.compat import anyres_problems, feature_layer_problems
from dcr_mllm.llava.checkpoints.convert_config import converted_config, converted_processor
from dcr_mllm.llava.checkpoints.formats import read_checkpoint
from dcr_mllm.llava.checkpoints.formats.llava_hf import load_check
from dcr_mllm.llava.checkpoints.formats.original import PREFIX as ORIGINAL_PREFIX
from dcr_mllm.llava.checkpoints.swap import check_destination
from dcr_mllm.llava.shards import (
    INDEX_NAME,
    Cast,
    Source,
    StoredTensor,
    describe,
    human_size,
    nbytes,
    read_header,
    write_shard,
)
from dcr_mllm.weights import refuse_pickles

# transformers' KEYS_TO_MODIFY_MAPPING (models/llava/convert_llava_weights_to_hf.py): each pair is
# applied in this order with str.replace to every key.
KEY_RENAMES = (
    ("model.vision_tower.", ""),
    (".vision_resampler", ""),
    ("model.mm_projector", "multi_modal_projector"),
    ("model", "model.model"),
    ("vision_model.model", "vision_model"),
    ("lm_head", "language_model.lm_head"),
    ("model.model", "language_model.model"),
    ("multi_modal_projector.0", "multi_modal_projector.linear_1"),
    ("multi_modal_projector.2", "multi_modal_projector.linear_2"),
)
# convert_llava_next_weights_to_hf.py's KEYS_TO_MODIFY_MAPPING: the same, then image_newline out of the LM
NEXT_KEY_RENAMES = (*KEY_RENAMES, ("language_model.model.image_newline", "image_newline"))
NEWLINE = "model.image_newline"
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
SINGLE = "model.safetensors"
PAD_MULTIPLE = 64
SEED = 0
TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}


@dataclass(frozen=True)
class Target:
    """What an original checkpoint converts to, and how transformers' script for it renames and drops keys."""

    architecture: str
    renames: tuple[tuple[str, str], ...]
    dropped: tuple[str, ...]
    label: str


LLAVA15 = Target("LlavaForConditionalGeneration", KEY_RENAMES, (NEWLINE,), "LLaVA-1.5")
LLAVA_NEXT = Target("LlavaNextForConditionalGeneration", NEXT_KEY_RENAMES, (), "LLaVA-1.6")


def hf_key(original_key: str, renames: tuple[tuple[str, str], ...] = KEY_RENAMES) -> str:
    """An original LLaVA tensor name in llava-hf, exactly as transformers' conversion renames it."""
    key = original_key
    for old, new in renames:
        if old in key:
            key = key.replace(old, new)
    return key


def padded_vocab_size(vocab_size: int) -> int:
    """Two added tokens, rounded up to a multiple of 64 (transformers' ``resize_token_embeddings(V + 2, 64)``)."""
    return -(-(vocab_size + 2) // PAD_MULTIPLE) * PAD_MULTIPLE


def new_embedding_rows(embeddings: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows drawn from N(mean, 1e-5 * covariance) of ``embeddings`` (transformers' recipe)."""
    values = embeddings.float()
    mean = values.mean(0)
    centered = values - mean
    covariance = centered.T @ centered / values.shape[0]
    scale, info = torch.linalg.cholesky_ex(1e-5 * covariance)
    if info:
        raise DcrError(
            "the input embeddings' covariance is singular, so new token rows cannot be drawn as transformers does"
        )
    return (mean + torch.randn(count, values.shape[1], generator=generator) @ scale.T).to(embeddings.dtype)


def _tower_location(name: str, checkpoint_dir: Path) -> str | Path:
    """``mm_vision_tower`` as a directory: relative to the checkpoint if it is there, else as given."""
    beside = checkpoint_dir / name
    return beside if (beside / "config.json").is_file() else name


def _check_supported(checkpoint: Checkpoint, tower: Tower) -> tuple[str, str, Target]:
    """The text model type, the feature-select strategy and the target, or one line naming everything
    llava-hf cannot hold."""
    config, spec = checkpoint.config, tower.spec
    problems = []
    text_type = TEXT_MODEL_TYPES.get(config.get("model_type"))
    if text_type is None:
        problems.append(
            f"model_type {config.get('model_type')!r} is not a LLaVA-Llama/Mistral checkpoint ({', '.join(TEXT_MODEL_TYPES)})"
        )
    if config.get("mm_projector_type", "linear") != "mlp2x_gelu":
        problems.append(
            f"mm_projector_type {config.get('mm_projector_type', 'linear')!r}: llava-hf holds only the mlp2x_gelu projector"
        )
    if config.get("mm_use_im_start_end"):
        problems.append("mm_use_im_start_end: llava-hf has no image start/end tokens")
    merge, aspect = config.get("mm_patch_merge_type", "flat"), str(config.get("image_aspect_ratio", ""))
    target = LLAVA15 if merge == "flat" else LLAVA_NEXT
    if merge not in ("flat", "spatial_unpad") or (merge == "spatial_unpad") != aspect.startswith("anyres"):
        problems.append(
            f"mm_patch_merge_type {merge!r} with image_aspect_ratio {aspect!r}: llava-hf holds flat "
            "(LLaVA-1.5) or spatial_unpad with anyres (LLaVA-1.6)"
        )
    select = config.get("mm_vision_select_feature", "patch")
    strategy = SELECT_STRATEGIES.get(select)
    if strategy is None:
        problems.append(f"mm_vision_select_feature {select!r}: use one of {', '.join(SELECT_STRATEGIES)}")
    elif target is LLAVA_NEXT:
        pinpoints = config.get("image_grid_pinpoints")
        if not isinstance(pinpoints, list) or not pinpoints:
            problems.append(
                f"image_grid_pinpoints {pinpoints!r}: a LLaVA-1.6 checkpoint lists its tile grids "
                "([[height, width], ...])"
            )
        else:
            problems += anyres_problems(
                pinpoints,
                spec,
                f"mm_vision_select_feature {select!r}",
                select == "patch",
                "patch" if spec.has_cls else "cls_patch",
            )
    if config.get("mm_hidden_size", spec.hidden_size) != spec.hidden_size:
        problems.append(f"hidden size: checkpoint mm_hidden_size {config['mm_hidden_size']}, tower {spec.hidden_size}")
    problems += feature_layer_problems(
        "mm_vision_select_layer", config.get("mm_vision_select_layer", -2), spec.num_layers
    )
    if problems:
        raise DcrError(f"cannot convert {checkpoint.path} to llava-hf: " + "; ".join(problems))
    return text_type, strategy, target


@dataclass
class ConvertedWeights:
    """Every output tensor and what it must equal, decided before anything is written."""

    layout: dict[str, list[tuple[str, Source]]]  # output safetensors file -> tensors in order
    originals: dict[str, Source]  # output key -> the input tensor it must equal (its first rows, when resized)
    tower_sources: dict[str, Cast]  # output key -> tower tensor, when the checkpoint stores no tower
    vocab: int
    padded_vocab: int
    dtype: torch.dtype
    nbytes: int  # of the input weights


def _input_tensors(checkpoint: Checkpoint) -> list[tuple[str, dict[str, Source]]]:
    """Each weight file with its tensors: safetensors as stored byte ranges, .bin pickles memory-mapped."""
    if checkpoint.shards:
        return [(name, dict(tensors)) for name, tensors in checkpoint.shards.items()]
    if not checkpoint.allow_pickle:
        refuse_pickles([checkpoint.path / name for name in checkpoint.bin_files])
    return [
        (name, torch.load(checkpoint.path / name, map_location="cpu", mmap=True, weights_only=True))
        for name in checkpoint.bin_files
    ]


def _load(source: Source) -> torch.Tensor:
    return source.load() if isinstance(source, (StoredTensor, Cast)) else source


def plan_weights(checkpoint: Checkpoint, tower: Tower, target: Target = LLAVA15) -> ConvertedWeights:
    """Rename every tensor as transformers does, pad the embeddings and lm_head, add the tower's tensors."""
    inputs = _input_tensors(checkpoint)
    tensors = {key: source for _, file_tensors in inputs for key, source in file_tensors.items()}
    for needed in (EMBED, NEWLINE) if target is LLAVA_NEXT else (EMBED,):
        if needed not in tensors:
            raise DcrError(f"{checkpoint.path} has no {needed}; it is not a complete {target.label} checkpoint")
    embeddings = _load(tensors[EMBED])
    vocab = checkpoint.config.get("vocab_size", embeddings.shape[0])
    if embeddings.shape[0] != vocab:
        raise DcrError(f"{EMBED} has {embeddings.shape[0]} rows but config.json says vocab_size {vocab}")
    padded = padded_vocab_size(vocab)
    tied = LM_HEAD not in tensors
    head = embeddings.clone() if tied else _load(tensors[LM_HEAD])
    generator = torch.Generator().manual_seed(SEED)
    resized = {
        hf_key(EMBED): torch.cat([embeddings, new_embedding_rows(embeddings, padded - vocab, generator)]),
        hf_key(LM_HEAD): torch.cat([head, new_embedding_rows(embeddings, padded - vocab, generator)]),
    }
    names = (
        [SINGLE]
        if len(inputs) == 1
        else [f"model-{i + 1:05d}-of-{len(inputs):05d}.safetensors" for i in range(len(inputs))]
    )
    layout, originals = {}, {}
    for out_name, (_, file_tensors) in zip(names, inputs):
        items = []
        for key, source in file_tensors.items():
            if key.endswith(".inv_freq") or key in target.dropped:
                continue
            name = hf_key(key, target.renames)
            items.append((name, resized.get(name, source)))
            originals[name] = source
            if key == EMBED and tied:  # lm_head starts as a copy of the embeddings
                items.append((hf_key(LM_HEAD), resized[hf_key(LM_HEAD)]))
                originals[hf_key(LM_HEAD)] = source
        layout[out_name] = items
    dtype = embeddings.dtype
    stored_tower = any(key.startswith(ORIGINAL_PREFIX) for key in tensors)
    tower_sources = (
        {} if stored_tower else {f"vision_tower.{key}": Cast(stored, dtype) for key, stored in tower.tensors.items()}
    )
    layout[names[-1]] += tower_sources.items()
    return ConvertedWeights(
        layout, originals, tower_sources, vocab, padded, dtype, sum(nbytes(s) for s in tensors.values())
    )


@dataclass
class ConvertReport:
    """What a conversion wrote; ``lines()`` is the summary the CLI prints."""

    src: Path
    dst: Path
    tower: Tower
    weights: ConvertedWeights
    config: object  # the LlavaConfig (LlavaNextConfig) written
    target: Target
    verified: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        spec, weights, config = self.tower.spec, self.weights, self.config
        origin = "taken from the tower directory" if weights.tower_sources else "stored in the checkpoint"
        return [
            f"convert-llava {self.src} -> {self.dst}",
            (
                f"  checkpoint  original {self.target.label}, {len(weights.layout)} weight file(s), "
                f"{human_size(weights.nbytes)}, "
                f"{str(weights.dtype).removeprefix('torch.')}"
            ),
            f"  tower       {self.tower.path} ({spec.family}, {spec.num_layers} layers, width {spec.hidden_size}); tensors {origin}",
            (
                "  keys        model.* -> language_model.model.*, lm_head -> language_model.lm_head, "
                "model.mm_projector.{0,2} -> multi_modal_projector.linear_{1,2}, tower -> vision_tower.vision_model.*"
                + (", model.image_newline -> image_newline" if self.target is LLAVA_NEXT else "")
            ),
            (
                f"  tokens      {IMAGE_TOKEN} = {config.image_token_index}, {PAD_TOKEN} = {config.pad_token_id}; vocabulary {weights.vocab} -> "
                f"{weights.padded_vocab} (new rows drawn from the embeddings' mean and covariance)"
            ),
            (
                f"  config      vision_feature_layer {config.vision_feature_layer}, vision_feature_select_strategy "
                f"{config.vision_feature_select_strategy}, image_seq_length {config.image_seq_length}"
                + (f", image_grid_pinpoints {config.image_grid_pinpoints}" if self.target is LLAVA_NEXT else "")
            ),
            *[f"  {'verified' if i == 0 else '':10}  {check}" for i, check in enumerate(self.verified)],
        ]


def convert_llava(
    input_dir: str | Path, output_dir: str | Path, *, force: bool = False, allow_pickle: bool = False
) -> ConvertReport:
    """Write the original LLaVA checkpoint INPUT as a llava-hf directory OUTPUT (see the module docstring).

    Args:
        input_dir: the original LLaVA checkpoint (``mm_vision_tower`` in its config.json); never modified.
        output_dir: the llava-hf directory to write; must not overlap ``input_dir``.
        force: replace an existing ``output_dir`` once the new one is written and verified.
        allow_pickle: read .bin weight files (the checkpoint's or its tower's) with the restricted unpickler.
    """
    src, dst = Path(input_dir), Path(output_dir)
    check_destination(src, dst, force)
    checkpoint = read_checkpoint(src, allow_pickle)
    if checkpoint.format != "original":
        raise DcrError(
            f"{src} is already a llava-hf checkpoint; convert-llava takes an original LLaVA one (mm_vision_tower in config.json)"
        )
    tower = read_tower(_tower_location(str(checkpoint.config["mm_vision_tower"]), src))
    text_type, strategy, target = _check_supported(checkpoint, tower)
    weights = plan_weights(checkpoint, tower, target)
    pinpoints = checkpoint.config["image_grid_pinpoints"] if target is LLAVA_NEXT else None
    do_pad = checkpoint.config.get("image_aspect_ratio") == "pad"
    processor = converted_processor(src, tower, strategy, weights.padded_vocab, do_pad, pinpoints)
    config = converted_config(
        checkpoint.config,
        text_type,
        tower,
        strategy,
        processor.tokenizer,
        padded_vocab=weights.padded_vocab,
        dtype=weights.dtype,
        architecture=target.architecture,
        pinpoints=pinpoints,
    )
    report = ConvertReport(src, dst, tower, weights, config, target)
    with atomic_dir(dst) as tmp:
        digests = {name: write_shard(tmp / name, items, {"format": "pt"}) for name, items in weights.layout.items()}
        if len(weights.layout) > 1:
            total = sum(nbytes(source) for items in weights.layout.values() for _, source in items)
            weight_map = {key: name for name, items in weights.layout.items() for key, _ in items}
            write_json(
                tmp / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            )
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, for loaders that read it alone
        if (src / "generation_config.json").is_file():
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
        report.verified = _verify(weights, tmp, digests, target)
    return report


def _verify(weights: ConvertedWeights, out: Path, digests: dict[str, list[bytes]], target: Target) -> list[str]:
    """Read the result back: every tensor's digest as written (renamed tensors: the input's, tower
    tensors: the cast tower's), the first ``vocab`` rows of the resized ones equal to the input's;
    transformers accepts every key and shape."""
    resized = (hf_key(EMBED), hf_key(LM_HEAD))
    checked = 0
    for name, items in weights.layout.items():
        written, _ = read_header(out / name)
        if [(key, stored.dtype, stored.shape) for key, stored in written.items()] != [
            (key, *describe(source)[:2]) for key, source in items
        ]:
            raise DcrError(f"verification failed: {out / name} does not hold the planned tensors")
        for (key, _), digest in zip(items, digests[name]):
            same = written[key].digest() == digest
            if key in resized:
                same = same and torch.equal(written[key].load()[: weights.vocab], _load(weights.originals[key]))
            if not same:
                raise DcrError(f"verification failed: {key} in {name} differs from its source")
            checked += 1
    return [
        f"{checked} tensors equal to their source (embeddings and lm_head: the first {weights.vocab} rows)",
        load_check(out, target.architecture),
    ]


__all__ = [
    "LLAVA15",
    "LLAVA_NEXT",
    "ConvertReport",
    "ConvertedWeights",
    "Target",
    "convert_llava",
    "hf_key",
    "new_embedding_rows",
    "padded_vocab_size",
    "plan_weights",
]
