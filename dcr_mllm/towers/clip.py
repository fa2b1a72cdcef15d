"""The CLIP family: OpenAI CLIP and MetaCLIP in transformers' format (``CLIPModel``, or its vision
model with or without the projection head). A CLS token comes before the patches."""

from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.towers.base import TowerFamily
from dcr_mllm.towers.hf import HFTower, read_hf_spec
from dcr_mllm.towers.registry import register_family

CLIP = TowerFamily(
    name="clip",
    tower_class=HFTower,
    read_spec=read_hf_spec,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    model_type="clip",
    vision_model_type="clip_vision_model",
    full_class="CLIPModel",
    vision_class="CLIPVisionModel",
    projection_class="CLIPVisionModelWithProjection",
    projection_config_class="CLIPVisionConfig",
)
register_family(CLIP)
