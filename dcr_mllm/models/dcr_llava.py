"""``--model dcr_llava``: lmms-eval's ``llava_hf`` with ``vision_tower=DIR`` swapped in memory.

    lmms-eval eval --model dcr_llava --model_args pretrained=CKPT,vision_tower=TOWER --tasks ...

scores TOWER inside the LLaVA checkpoint CKPT without writing a new checkpoint. The tower must
fit the checkpoint exactly as ``dcr-mllm swap-tower`` requires (hidden size, layers, patch and
image size, feature layer, same family); its image processor replaces the checkpoint's.
"""

from __future__ import annotations

import hashlib

import torch
from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf as LlavaHfSimple
from loguru import logger

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoint import FAMILY_OF_VISION_TYPE, load_vision_state, read_tower
from dcr_mllm.llava.compat import vision_config_problems


def swap_vision_tower(model, processor, tower_dir: str) -> str:
    """Load ``tower_dir``'s vision encoder into ``model`` (checked as ``swap-tower`` checks a llava-hf
    checkpoint first); returns its weights' sha256."""
    from dcr_mllm.llava.build import llava_image_processor

    tower = read_tower(tower_dir)
    config = model.config
    vision = config.vision_config
    problems = vision_config_problems(vision.to_dict(), config.vision_feature_layer, tower.spec)
    family = FAMILY_OF_VISION_TYPE.get(vision.model_type)
    if family != tower.spec.family:
        problems.append(f"family: checkpoint {family}, tower {tower.spec.family}; write a new checkpoint with "
                        "`dcr-mllm swap-tower --allow-family-change` and retrain the projector")
    if problems:
        raise DcrError(f"tower {tower_dir} does not fit {getattr(config, '_name_or_path', 'the checkpoint')}: " + "; ".join(problems))
    vision_tower = model.model.vision_tower
    state = load_vision_state(tower, vision_tower)
    reference = next(vision_tower.parameters())
    vision_tower.load_state_dict({k: v.to(reference.dtype) for k, v in state.items()}, strict=True)
    # the tower's preprocessing, padded as LLaVA-1.5 trains unless the checkpoint says otherwise
    processor.image_processor = llava_image_processor(tower.path, do_pad=getattr(processor.image_processor, "do_pad", True))
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
            logger.info(f"dcr_llava: vision tower {vision_tower} swapped in (weights sha256 {self.vision_tower_sha256})")


class DcrLlava(_TowerSwap, LlavaHfChat):
    """The chat-template path (lmms-eval's default for llava_hf)."""


class DcrLlavaSimple(_TowerSwap, LlavaHfSimple):
    """The simple path (``--force_simple``)."""
