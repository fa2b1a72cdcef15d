"""Data for every stage: image-text shards, image folders and locally generated synthetic scenes."""

from dcr_mllm.data.images import (
    ImageFolder,
    ImageTextShards,
    collate_image_text,
    collate_skip_none,
    expand_shard_urls,
    load_rgb,
    to_tensor_square,
)
from dcr_mllm.data.synthetic import (
    ATTRIBUTE_VALUES,
    SceneAttributes,
    caption,
    make_pair,
    render_scene,
    sample_attributes,
    write_image_folder,
    write_synthetic_shards,
)

__all__ = [
    "ATTRIBUTE_VALUES",
    "ImageFolder",
    "ImageTextShards",
    "SceneAttributes",
    "caption",
    "collate_image_text",
    "collate_skip_none",
    "expand_shard_urls",
    "load_rgb",
    "make_pair",
    "render_scene",
    "sample_attributes",
    "to_tensor_square",
    "write_image_folder",
    "write_synthetic_shards",
]
