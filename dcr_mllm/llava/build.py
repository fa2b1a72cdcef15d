"""Assemble a LLaVA-1.5 model (transformers' native ``LlavaForConditionalGeneration``) from a
vision-tower directory and a causal-LM directory.

LLaVA-1.5's choices: a two-layer GELU MLP projector (``mlp2x_gelu``), patch features from the
second-to-last tower layer, the CLS token dropped for CLIP-family towers (SigLIP has none),
``<image>`` and ``<pad>`` added to the tokenizer with the embeddings resized, and a
``LlavaProcessor`` that pairs the tower's preprocessing after LLaVA's square padding with the
tokenizer and the ``vicuna_v1`` chat template. The result is a standard llava-hf checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.prompts import IMAGE_TOKEN, PAD_TOKEN, VICUNA_CHAT_TEMPLATE
from dcr_mllm.towers import inspect_tower, resolve_tower_path


@dataclass(frozen=True)
class VisionLayout:
    """How the LM sees a tower: feature layer, CLS handling and tokens per image."""

    feature_layer: int
    select_strategy: str  # "default" drops the CLS token, "full" keeps every token
    num_additional_tokens: int  # the CLS the processor counts before "default" drops it
    image_seq_length: int
    patch_size: int


def vision_layout(tower: str | Path, feature_layer: int = -2) -> VisionLayout:
    spec = inspect_tower(tower)
    spec.family.require_llava(tower)
    if not -spec.num_layers <= feature_layer <= spec.num_layers:
        raise DcrError(
            f"feature layer {feature_layer} does not exist in a {spec.num_layers}-layer tower; choose one in [-{spec.num_layers}, {spec.num_layers}]"
        )
    return VisionLayout(
        feature_layer=feature_layer,
        select_strategy="default" if spec.has_cls else "full",
        num_additional_tokens=1 if spec.has_cls else 0,
        image_seq_length=spec.num_patches,
        patch_size=spec.patch_size,
    )


def add_llava_tokens(tokenizer) -> None:
    """``<image>`` then ``<pad>``, as transformers' LLaVA conversion adds them (llava-hf: 32000, 32001)."""
    from transformers import AddedToken

    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


#: tower image-processor fields a LlavaImageProcessor takes over
IMAGE_PROCESSOR_FIELDS = (
    "image_mean",
    "image_std",
    "size",
    "crop_size",
    "do_center_crop",
    "resample",
    "rescale_factor",
    "do_resize",
    "do_rescale",
    "do_normalize",
    "do_convert_rgb",
)


def llava_image_processor(tower_processor, do_pad: bool = True):
    """A ``LlavaImageProcessor`` that preprocesses as the tower does, after LLaVA's ``pad`` aspect when
    ``do_pad``: the image centred on a square of the mean colour (``expand2square``, LLaVA's
    llava/train/train.py:703-715), which transformers' processor reproduces. Training and every saved
    model use it, so a model sees the same pixels in evaluation as in training.

    ``tower_processor``: the tower's image processor, its dict, or a tower directory.
    """
    from transformers import AutoImageProcessor, LlavaImageProcessor

    if isinstance(tower_processor, (str, Path)):
        tower_processor = AutoImageProcessor.from_pretrained(resolve_tower_path(tower_processor))
    config = tower_processor if isinstance(tower_processor, dict) else tower_processor.to_dict()
    fields = {key: config[key] for key in IMAGE_PROCESSOR_FIELDS if config.get(key) is not None}
    if not fields.get("do_center_crop"):  # SigLIP resizes straight to its square: no crop
        fields["do_center_crop"] = False
        fields["crop_size"] = fields["size"]
    return LlavaImageProcessor(**fields, do_pad=do_pad)


def build_processor(tower: str | Path, language_model: str | Path, feature_layer: int = -2):
    """LlavaProcessor: the tower's preprocessing with LLaVA's padding, the LM tokenizer with
    <image>/<pad>, the vicuna_v1 template.

    Args:
        tower: the vision tower's directory or preset name.
        language_model: the causal LM's directory (safetensors weights, tokenizer).
        feature_layer: the tower's hidden layer LLaVA reads (-2: LLaVA-1.5's second-to-last).
    """
    from transformers import AutoTokenizer, LlavaProcessor

    layout = vision_layout(tower, feature_layer)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    add_llava_tokens(tokenizer)
    tokenizer.padding_side = "right"
    return LlavaProcessor(
        image_processor=llava_image_processor(tower),
        tokenizer=tokenizer,
        patch_size=layout.patch_size,
        vision_feature_select_strategy=layout.select_strategy,
        num_additional_image_tokens=layout.num_additional_tokens,
        chat_template=VICUNA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


VOCAB_MULTIPLE = 64
# LlavaForConditionalGeneration's parameter names by part (transformers 5)
TOWER_PREFIX, LM_PREFIX, PROJECTOR_PREFIX = (
    "model.vision_tower.",
    "model.language_model.",
    "model.multi_modal_projector.",
)
EMBED, LM_HEAD, LM_EMBED = "model.language_model.embed_tokens.weight", "lm_head.weight", "model.embed_tokens.weight"


def llava_config(tower: str | Path, language_model: str | Path, feature_layer: int, tokenizer, dtype: torch.dtype):
    """The llava-hf config: the tower's vision part, the LM's config with the vocabulary grown by
    <image>/<pad> to a multiple of 64 (``resize_token_embeddings(len(tokenizer), 64)``).

    Args:
        tower: the vision tower's directory or preset name.
        language_model: the causal LM's directory (safetensors weights, tokenizer).
        feature_layer: the tower's hidden layer LLaVA reads (-2: LLaVA-1.5's second-to-last).
        tokenizer: the LM tokenizer with LLaVA's tokens added (``build_processor``'s).
        dtype: the dtype the config records for the language model.
    """
    from transformers import AutoConfig, LlavaConfig

    layout = vision_layout(tower, feature_layer)
    vision_config = AutoConfig.from_pretrained(resolve_tower_path(tower))
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full CLIP/SigLIP -> vision part
    text_config = AutoConfig.from_pretrained(language_model)
    text_config.vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text_config.dtype = dtype
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=layout.image_seq_length,
        vision_feature_layer=layout.feature_layer,
        vision_feature_select_strategy=layout.select_strategy,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_llava(
    tower: str | Path,
    language_model: str | Path,
    feature_layer: int = -2,
    dtype: torch.dtype = torch.float32,
    ds_config: dict | None = None,
):
    """(model, processor): the tower's and the LM's weights as given, the added token rows drawn as
    transformers' mean resizing does (seeded), a freshly initialised projector.

    With ``ds_config`` (the engine's ZeRO-3 config) the model is built partitioned, in that
    config's dtype, and the weights are streamed in one module at a time: no rank ever holds
    the whole model. Every rank must call it together then.

    Args:
        tower: the vision tower's directory or preset name.
        language_model: the causal LM's directory (safetensors weights, tokenizer).
        feature_layer: the tower's hidden layer LLaVA reads (-2: LLaVA-1.5's second-to-last).
        dtype: the model's dtype without ``ds_config``.
        ds_config: the engine's ZeRO-3 config, or None to build the whole model here.
    """
    from transformers import LlavaForConditionalGeneration

    from dcr_mllm.training.zero import config_dtype, empty_init, gathered, load_streamed

    processor = build_processor(tower, language_model, feature_layer)
    dtype = dtype if ds_config is None else config_dtype(ds_config)
    config = llava_config(tower, language_model, feature_layer, processor.tokenizer, dtype)
    with empty_init(dtype, ds_config):
        model = LlavaForConditionalGeneration(config)
    names = [name for name, _ in model.named_parameters()]
    sources = base_tensors(tower, language_model, [n for n in names if not n.startswith(PROJECTOR_PREFIX)])
    vocab = config.text_config.vocab_size
    load_streamed(model, lambda name: base_value(name, sources[name], vocab), set(sources))
    projector = model.model.multi_modal_projector
    with gathered(projector.parameters()), torch.no_grad():  # every rank draws the same values; rank 0's are kept
        for layer in projector.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def base_tensors(tower: str | Path, language_model: str | Path, names: list[str]) -> dict:
    """Where each named LLaVA parameter starts from: a tensor stored in the tower's or the LM's
    safetensors files (located by their headers, nothing read yet).

    Args:
        tower: the vision tower's directory or preset name.
        language_model: the causal LM's directory (safetensors weights, tokenizer).
        names: the LLaVA parameter names to locate (the projector's are new, not among them).
    """
    tower_dir, lm_dir = resolve_tower_path(tower), Path(language_model)
    tower_files = _stored(tower_dir)
    lm_files = _stored(lm_dir)
    if not lm_files:
        raise DcrError(
            f"{lm_dir} has no safetensors weights; save the language model with save_pretrained(safe_serialization=True) first"
        )
    sources = {}
    for name in names:
        if name.startswith(TOWER_PREFIX):
            key = name.removeprefix(TOWER_PREFIX)
            found = tower_files.get(key) or tower_files.get("vision_model." + key)
            where = tower_dir
        else:
            key = "model." + name.removeprefix(LM_PREFIX) if name.startswith(LM_PREFIX) else name
            found = lm_files.get(key) or (lm_files.get(LM_EMBED) if name == LM_HEAD else None)  # a tied head
            where = lm_dir
        if found is None:
            raise DcrError(
                f"{where} lacks {key}; it is not a complete {'tower' if where == tower_dir else 'language model'} directory"
            )
        sources[name] = found
    return sources


def base_value(name: str, source, vocab: int) -> torch.Tensor:
    """A base tensor's value; the embeddings and head cut or grown to ``vocab`` rows, new rows drawn
    from N(mean, 1e-5 covariance) of the existing ones with a fixed seed (transformers' recipe).

    Args:
        name: the LLaVA parameter name.
        source: where it is stored (a ``base_tensors`` value).
        vocab: the grown vocabulary's size, in rows.
    """
    value = source.load()
    if name not in (EMBED, LM_HEAD) or value.shape[0] == vocab:
        return value
    if value.shape[0] > vocab:
        return value[:vocab].clone()
    return torch.cat([value, _new_rows(value, vocab - value.shape[0])])


def _new_rows(embeddings: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows from N(mean, 1e-5 covariance) of ``embeddings``, or the mean where that
    covariance is singular (fewer rows than columns), as transformers' mean resizing draws them."""
    values = embeddings.float()
    mean = values.mean(0)
    centered = values - mean
    scale, info = torch.linalg.cholesky_ex(1e-5 * (centered.T @ centered) / values.shape[0])
    if info:
        return mean.expand(count, -1).to(embeddings.dtype)
    noise = torch.randn(count, values.shape[1], generator=torch.Generator().manual_seed(0))
    return (mean + noise @ scale.T).to(embeddings.dtype)


def _stored(directory: Path) -> dict:
    """Every tensor of a directory's safetensors files, by name."""
    from dcr_mllm.llava.shards import read_header

    return {
        name: stored
        for file in sorted(directory.glob("*.safetensors"))
        for name, stored in read_header(file)[0].items()
    }


def add_language_lora(model, lora) -> None:
    """LoRA adapters on the language model's projections (the LoRA finetune variant)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets),
        model.model.language_model,
    )
