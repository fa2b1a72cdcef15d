"""The CLIP family: OpenAI CLIP and MetaCLIP in transformers' format (``CLIPModel``, or its vision
model with or without the projection head). A CLS token comes before the patches."""

from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.towers.base import TowerFamily
from dcr_mllm.towers.hf import HFTower, read_hf_spec
from dcr_mllm.towers.registry import register_family


def clip_image_processor(size: int):
    """OpenAI's: the short side resized to ``size``, centre-cropped square, OpenAI's statistics."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


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
    image_processor=clip_image_processor,
)
register_family(CLIP)
