"""Everything the world pipeline reads, in one place: ``dcr-mllm build-world --output outputs/world``.

- the base models ``world-clip`` and ``world-sd`` (built once, cached: ``models.build_world``);
- ``OUT/shards``: stage one's training images (webdataset shards, detailed captions);
- ``OUT/llava``: stage two's conversations (``conversations.write_world_conversations``);
- ``OUT/eval``: the tower evaluation set with its labels (``scenes.write_world``), what stage 4 reports;
- ``OUT/val``: a labelled validation set of its own seed, for choosing a step during training.

Each set comes from its own seed, and evaluation seeds are never training seeds. Every piece that
is already complete and was made from the same settings (its ``generated.json``) is kept, so a
second call takes well under a second; one made from other settings is generated anew.
"""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.world.conversations import write_world_conversations
from dcr_mllm.world.models import WorldSpec, build_world
from dcr_mllm.world.scenes import world_eval_set, write_world_shards

SHARD_SEED = 14  # stage one's images: neither the world models' seeds (10-12) nor an evaluation seed
CONVERSATION_SEED = 13
EVAL_SEED = 1  # the tower evaluation set; the LLaVA questions use eval_data.WORLD_QA_SEED (2)
VAL_SEED = 3  # the validation set stage one's evaluation may choose a step on (never the reported one)
SHARD_COUNT = 4096
CONVERSATION_COUNT = 16000  # the long schedule (llava_full.yaml) passes over them about six times
EVAL_COUNT = 1200
VAL_COUNT = 300


def prepare_world(
    output: str | Path = "outputs/world",
    spec: WorldSpec | None = None,
    world_root: str | Path | None = None,
    shard_count: int = SHARD_COUNT,
    conversation_count: int = CONVERSATION_COUNT,
    eval_count: int = EVAL_COUNT,
    val_count: int = VAL_COUNT,
) -> dict[str, Path]:
    """Build what is missing; returns ``{name: path}`` for the models and the three sets
    (``conversation_count`` 0 skips the conversations).

    Args:
        output: the directory of the world's data sets (``shards/``, ``llava/``, ``eval/``, ``val/``).
        spec: the world models' settings; None: the default ``WorldSpec``.
        world_root: the directory of world models; None: ``default_world_root(spec)``.
        shard_count: stage one's training images.
        conversation_count: stage two's conversations; 0: none.
        eval_count: images in the tower evaluation set.
        val_count: images in the validation set.
    """
    spec = spec or WorldSpec()
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise DcrError(f"--output {out} is a file; give a directory for the world's data sets")
    if spec.one_background and conversation_count:
        raise DcrError(
            f"the world on one background ({spec.variant}) is stage one's controlled premise: it has no LLaVA "
            "conversations; prepare it with conversation_count=0 (the ablation does)"
        )
    out.mkdir(parents=True, exist_ok=True)
    models = build_world(world_root, spec)
    paths = {
        "world-clip": models["clip"],
        "world-sd": models["sd"],
        "shards": write_world_shards(
            out / "shards", shard_count, SHARD_SEED, size=spec.image_size, background=spec.one_background
        ),
    }
    if conversation_count:
        paths["llava"] = write_world_conversations(
            out / "llava", conversation_count, CONVERSATION_SEED, size=spec.image_size
        )
    paths["eval"] = world_eval_set(out / "eval", EVAL_SEED, eval_count, spec.image_size, spec.one_background)
    paths["val"] = world_eval_set(out / "val", VAL_SEED, val_count, spec.image_size, spec.one_background)
    return paths
