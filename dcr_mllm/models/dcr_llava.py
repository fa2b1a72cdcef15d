"""``--model dcr_llava``: lmms-eval's ``llava_hf`` with ``vision_tower=DIR`` swapped in memory.

    lmms-eval eval --model dcr_llava --model_args pretrained=CKPT,vision_tower=TOWER --tasks ...

scores TOWER inside the LLaVA checkpoint CKPT without writing a new checkpoint. ``llava_hf`` loads
LLaVA-1.5, -NeXT and -OneVision checkpoints; the tower must fit as ``dcr-mllm swap-tower`` requires
for that family (``llava.checkpoints.formats``: hidden size, layers, patch and image size, feature layer, same
family, NeXT/OneVision tiles; a checkpoint that keeps fewer layers than the tower takes its first ones), and the checkpoint's image processor follows it as there (LLaVA-1.5:
the tower's preprocessing; NeXT/OneVision: the tower's normalisation, tiles kept).
"""

from __future__ import annotations

import hashlib

import torch
from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as LlavaHfSimple
from loguru import logger

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoints.checkpoint import load_vision_state, read_tower
from dcr_mllm.llava.checkpoints.formats import LLAVA_HF
from dcr_mllm.llava.checkpoints.formats.llava_next import PIXEL_SECTIONS


def swap_vision_tower(model, processor, tower_dir: str) -> str:
    """Load ``tower_dir``'s vision encoder into ``model`` (checked as ``swap-tower`` checks a checkpoint
    of the model's family first); returns its weights' sha256."""
    tower = read_tower(tower_dir)
    config = model.config
    kind = LLAVA_HF.get(config.model_type)
    if kind is None:
        raise DcrError(f"dcr_llava swaps towers into {', '.join(LLAVA_HF)} models, not {config.model_type!r}")
    fit = kind.config_fit(config.to_dict(), processor.image_processor.to_dict(), tower, allow_family_change=False)
    if fit.problems:
        name = getattr(config, "_name_or_path", "the checkpoint")
        raise DcrError(fit.refusal(tower_dir, name))
    for note in fit.notes:  # e.g. which tower layer a checkpoint that keeps fewer layers reads
        logger.info(f"dcr_llava: {note}")
    vision_tower = model.model.vision_tower
    state = load_vision_state(tower, vision_tower)
    reference = next(vision_tower.parameters())
    vision_tower.load_state_dict({k: v.to(reference.dtype) for k, v in state.items()}, strict=True)
    for name in PIXEL_SECTIONS:  # the processor's parts that preprocess pixels for the tower
        if getattr(processor, name, None) is not None:
            setattr(processor, name, kind.image_processor(tower, getattr(processor, name)))
    sha = hashlib.sha256()
    for key in sorted(state):
        sha.update(state[key].to(torch.float32).numpy().tobytes())
    return sha.hexdigest()


class _TowerSwap:
    """Adds ``vision_tower=DIR`` to a llava_hf model class."""

    def __init__(self, pretrained: str, vision_tower: str | None = None, **kwargs) -> None:
        if vision_tower:
            read_tower(vision_tower)  # a damaged or missing tower fails before the checkpoint loads
        super().__init__(pretrained=pretrained, **kwargs)
        self.vision_tower_path = vision_tower
        self.vision_tower_sha256 = None
        if vision_tower:
            model = getattr(self._model, "module", self._model)  # unwrap DDP
            self.vision_tower_sha256 = swap_vision_tower(model, self._image_processor, vision_tower)
            logger.info(
                f"dcr_llava: vision tower {vision_tower} swapped in (weights sha256 {self.vision_tower_sha256})"
            )


class DcrLlava(_TowerSwap, LlavaHfChat):
    """The chat-template path (lmms-eval's default for llava_hf)."""


class DcrLlavaSimple(_TowerSwap, LlavaHfSimple):
    """The simple path (``--force_simple``)."""
