"""The SigLIP family in transformers' format (``SiglipModel`` or ``SiglipVisionModel``). No CLS token
(it pools in its vision model's head, so no projection outside it); its text is padded to full
length without a mask, as it was trained."""

from dcr_mllm.normalization import SIGLIP_MEAN, SIGLIP_STD
from dcr_mllm.towers.base import TowerFamily
from dcr_mllm.towers.hf import HFTower, read_hf_spec
from dcr_mllm.towers.registry import register_family


def siglip_image_processor(size: int):
    """Google's: resized to the ``size`` square (no crop), mean and std 0.5."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(
        size={"height": size, "width": size}, image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD)
    )


SIGLIP = TowerFamily(
    name="siglip",
    tower_class=HFTower,
    read_spec=read_hf_spec,
    mean=SIGLIP_MEAN,
    std=SIGLIP_STD,
    model_type="siglip",
    vision_model_type="siglip_vision_model",
    full_class="SiglipModel",
    vision_class="SiglipVisionModel",
    has_cls=False,
    pads_text_to_max_length=True,
    image_processor=siglip_image_processor,
)
register_family(SIGLIP)
