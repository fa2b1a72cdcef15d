"""Assemble a LLaVA-1.5 model (transformers' native ``LlavaForConditionalGeneration``) from a
vision-tower directory and a causal-LM directory.

LLaVA-1.5's choices: a two-layer GELU MLP projector (``mlp2x_gelu``), patch features from the
second-to-last tower layer, the CLS token dropped for CLIP-family towers (SigLIP has none),
``<image>`` and ``<pad>`` added to the tokenizer with the embeddings resized, and a
``LlavaProcessor`` that pairs the tower's own image processor with the tokenizer and the
``vicuna_v1`` chat template. The result is a standard llava-hf checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.towers import inspect_tower, resolve_tower_path

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# vicuna_v1 as a chat template: "{system} USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ..."
VICUNA_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system = message['content'] if message['content'] is string else message['content'][0]['text'] %}"
    "{% endif %}{% endfor %}"
    "{{ ns.system }}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' }}{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


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
    if spec.family == "open_clip":
        raise DcrError(f"{tower} is an open_clip tower; LLaVA needs a HF CLIP/MetaCLIP/SigLIP tower directory")
    if not -spec.num_layers <= feature_layer <= spec.num_layers:
        raise DcrError(f"feature layer {feature_layer} does not exist in a {spec.num_layers}-layer tower; choose one in [-{spec.num_layers}, {spec.num_layers}]")
    return VisionLayout(
        feature_layer=feature_layer,
        select_strategy="default" if spec.has_cls else "full",
        num_additional_tokens=1 if spec.has_cls else 0,
        image_seq_length=spec.num_patches,
        patch_size=spec.patch_size,
    )


def build_processor(tower: str | Path, language_model: str | Path, feature_layer: int = -2):
    """LlavaProcessor: the tower's image processor, the LM tokenizer with <image>/<pad>, the template."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    layout = vision_layout(tower, feature_layer)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.padding_side = "right"
    image_processor = AutoImageProcessor.from_pretrained(resolve_tower_path(tower))
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=layout.patch_size,
        vision_feature_select_strategy=layout.select_strategy,
        num_additional_image_tokens=layout.num_additional_tokens,
        chat_template=VICUNA_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_llava(tower: str | Path, language_model: str | Path, feature_layer: int = -2,
                dtype: torch.dtype = torch.float32):
    """(model, processor): the tower's and the LM's weights as given, a freshly initialised projector."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    layout = vision_layout(tower, feature_layer)
    tower_dir = resolve_tower_path(tower)
    processor = build_processor(tower, language_model, feature_layer)
    tokenizer = processor.tokenizer

    vision_config = AutoConfig.from_pretrained(tower_dir)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full CLIP/SigLIP -> vision part
    vision = AutoModel.from_config(vision_config)
    vision.load_state_dict(_vision_state(tower_dir, vision), strict=True)
    lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)

    config = LlavaConfig(
        vision_config=vision_config,
        text_config=lm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=layout.image_seq_length,
        vision_feature_layer=layout.feature_layer,
        vision_feature_select_strategy=layout.select_strategy,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):  # every part is replaced below: allocate nothing twice
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision.to(dtype)
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    model.model.multi_modal_projector = type(model.model.multi_modal_projector)(config).to(dtype)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def add_language_lora(model, lora) -> None:
    """LoRA adapters on the language model's projections (the LoRA finetune variant)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets),
                            model.model.language_model)


def _vision_state(tower_dir: Path, vision: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The vision encoder's tensors from a tower directory, whatever model class saved it."""
    from safetensors import safe_open

    wanted = set(vision.state_dict())
    state = {}
    for file in sorted(tower_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("vision_model.")
                if name in wanted:
                    state[name] = f.get_tensor(key)
    missing = wanted - set(state)
    if missing:
        raise DcrError(f"{tower_dir} lacks vision weights ({sorted(missing)[0]}, ...); it is not a complete tower directory")
    return state
