"""The config and processor of a checkpoint that ``convert`` turns into llava-hf.

The processor is the checkpoint's tokenizer with ``<image>`` and ``<pad>`` added as transformers
adds them, the tower's image preprocessing and LLaVA-1.5's ``vicuna_v1`` chat template; the config
is ``LlavaConfig`` (LLaVA-1.6: ``LlavaNextConfig``) from the language model's part of the original
config and the tower's vision config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import IMAGE_TOKEN, PAD_TOKEN, VICUNA_CHAT_TEMPLATE, add_llava_tokens, llava_image_processor
from dcr_mllm.llava.checkpoints.checkpoint import Tower

#: original-LLaVA config keys that describe the multimodal wrapper, not the language model
LLAVA_ONLY = {
    "architectures",
    "_name_or_path",
    "model_type",
    "transformers_version",
    "use_mm_proj",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
}


def converted_processor(
    src: Path, tower: Tower, strategy: str, padded_vocab: int, do_pad: bool, pinpoints: list | None
):
    """The checkpoint's tokenizer with <image> and <pad> added as transformers adds them, the tower's
    preprocessing (after the square padding the checkpoint was trained with, if ``do_pad``; LLaVA-1.6:
    tiled to the checkpoint's ``pinpoints`` instead, as transformers' script builds its
    ``LlavaNextImageProcessor`` from the tower's) and the vicuna_v1 chat template."""
    from transformers import AutoTokenizer, LlavaNextImageProcessor, LlavaNextProcessor, LlavaProcessor

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as err:  # tokenizers fail with many exception types; the first line says why
        raise DcrError(
            f"cannot load the tokenizer in {src} ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    add_llava_tokens(tokenizer)
    if len(tokenizer) > padded_vocab:
        raise DcrError(
            f"the tokenizer in {src} has {len(tokenizer)} tokens with {IMAGE_TOKEN} and {PAD_TOKEN}, more than the padded vocabulary {padded_vocab}"
        )
    spec = tower.spec
    if pinpoints:
        processor_class = LlavaNextProcessor
        image_processor = LlavaNextImageProcessor.from_pretrained(tower.path, image_grid_pinpoints=pinpoints)
    else:
        processor_class, image_processor = LlavaProcessor, llava_image_processor(tower.path, do_pad)
    return processor_class(
        tokenizer=tokenizer,
        image_processor=image_processor,
        patch_size=spec.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if spec.has_cls else 0,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )


def converted_config(
    original: dict,
    text_type: str,
    tower: Tower,
    strategy: str,
    tokenizer,
    *,
    padded_vocab: int,
    dtype: torch.dtype,
    architecture: str,
    pinpoints: list | None,
):
    """LlavaConfig (LLaVA-1.6, when the checkpoint has ``pinpoints``: LlavaNextConfig with its
    image_grid_pinpoints): the language model's part of the original config, the tower's vision
    config, LLaVA's layout."""
    from transformers import LlavaConfig, LlavaNextConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    text = {k: v for k, v in original.items() if k not in LLAVA_ONLY and not k.startswith("mm_")}
    vision = dict(tower.vision_config)
    tiles = {"image_grid_pinpoints": pinpoints} if pinpoints else {}
    config = (LlavaNextConfig if pinpoints else LlavaConfig)(
        **tiles,
        text_config=CONFIG_MAPPING[text_type].from_dict({**text, "vocab_size": padded_vocab}),
        vision_config=CONFIG_MAPPING[vision.pop("model_type")].from_dict(vision),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=tower.spec.num_patches + (1 if strategy == "full" and tower.spec.has_cls else 0),
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = [architecture]
    config.dtype = dtype
    return config
