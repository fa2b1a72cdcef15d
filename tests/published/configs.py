"""Published configs of the checkpoints and presets the docs name, transcribed with where each was read.

Only the keys our routes read are kept where a file was not found whole; a file found whole is kept
whole (less the text model's keys where they do not matter). Each entry's ``_source`` says where it was
read: a repository, path and commit (a vendored copy of the hub file, or the conversion script that
wrote the hub checkpoint), or a file and line of the pinned transformers (5.24.0) for class defaults
that a conversion script left to them.

Not transcribed:
- ``scheduler/scheduler_config.json`` of Stable Diffusion 2.1-base: no readable copy was found (the
  pipeline's ``model_index.json`` below names ``PNDMScheduler``; its ``prediction_type`` was not read).
- the towers' own ``config.json`` / ``preprocessor_config.json`` of clip-l14-224, metaclip-l14,
  metaclip-h14 and siglip-so400m-224: no readable copy was found; their sizes stay those of
  ``dcr_mllm/presets/real.py`` (recounted in tests/presets/test_real.py). CLIP ViT-L/14-336's and
  SigLIP so400m-384's vision configs are transcribed below from the LLaVA checkpoints built on them.
- the hub ``config.json`` of llava-1.5-13b-hf, llava-v1.6-vicuna-7b-hf and the OneVision checkpoints:
  no readable copy; their vision side is what the conversion script that wrote them set (cited).
"""

from __future__ import annotations

import copy

#: transformers' conversion script for LLaVA-1.5 (LlavaConfig's vision defaults, vision_feature_layer -2)
CONVERT_LLAVA = (
    "huggingface/transformers src/transformers/models/llava/convert_llava_weights_to_hf.py "
    "@ 01080c629600d4ff3121446bb4f4a2e240c2cf41 (LlavaConfig(text_config=..., vision_config=None))"
)
CONVERT_NEXT = (
    "huggingface/transformers src/transformers/models/llava_next/convert_llava_next_weights_to_hf.py "
    "@ 063b32f6798ec8ec747dafd5790679fafee38f6f (LlavaNextConfig(image_grid_pinpoints=image_processor."
    "image_grid_pinpoints, use_image_newline_parameter=True)); defaults: transformers 5.24.0 "
    "models/llava_next/configuration_llava_next.py lines 81-89, image_processing_llava_next.py line 69"
)
CONVERT_ONEVISION = (
    "huggingface/transformers src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py "
    "@ d058e0f712f346209059c8bbdcaaf5d9cd762075 (SiglipVisionConfig(..., num_hidden_layers=26,  # drop the last "
    "layer, vision_use_head=False); LlavaOnevisionProcessor(num_image_tokens=729, vision_feature_select_strategy="
    "'full')); defaults: transformers 5.24.0 models/llava_onevision/configuration_llava_onevision.py lines 82-83 "
    "(full, -1) and 91-130 (pinpoints)"
)

#: CLIP ViT-L/14-336's vision config as every LLaVA-1.5/NeXT checkpoint stores it
CLIP_L14_336_VISION = {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000,
}

#: openai/clip-vit-large-patch14-336's image processor, as llava-1.5-7b-hf stores it (the conversion
#: script takes AutoImageProcessor.from_pretrained("openai/clip-vit-large-patch14-336"))
CLIP_L14_336_PREPROCESSOR = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

#: google/siglip-so400m-patch14-384's vision config: the OneVision conversion's SiglipVisionConfig (CONVERT_ONEVISION)
#: with the one layer it drops ("num_hidden_layers=26,  # drop the last layer") put back: 27, as llama.cpp's
#: docs write a SigLIP so400m-384 vision config (ggml-org/llama.cpp docs/multimodal/granitevision.md
#: @ 7cf803b6698055adf96b844a239ab8965ef976f4: hidden_size 1152, image_size 384, intermediate_size 4304,
#: num_attention_heads 16, num_hidden_layers 27, patch_size 14)
SIGLIP_SO400M_384_VISION = {
    "hidden_size": 1152,
    "image_size": 384,
    "intermediate_size": 4304,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "patch_size": 14,
}

NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

LLAVA_15_7B_HF = {
    "_source": "llava-hf/llava-1.5-7b-hf (transformers 4.36.0.dev0), vendored copy: tung2kg1/AI-Stock-Chart-Analysis "
    "llava-1.5-7b-hf/{config,preprocessor_config,processor_config}.json @ 61f63b568cf2def9b3e13740ee072bf3b48dac8a",
    "config": {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": 32000,
        "model_type": "llava",
        "pad_token_id": 32001,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": CLIP_L14_336_VISION,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    },
    "preprocessor_config.json": CLIP_L14_336_PREPROCESSOR,
    "processor_config.json": {
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
        "patch_size": 14,
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": "default",
    },
}

#: the vision side its conversion wrote (the same script and defaults as the 7B; text: lmsys/vicuna-13b-v1.5)
LLAVA_15_13B_HF = {
    "_source": CONVERT_LLAVA,
    "config": {
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": 32000,
        "model_type": "llava",
        "pad_token_id": 32001,
        "text_config": {"model_type": "llama", "_name_or_path": "lmsys/vicuna-13b-v1.5"},
        "vision_config": CLIP_L14_336_VISION,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    },
    "preprocessor_config.json": CLIP_L14_336_PREPROCESSOR,
}

LLAVA_NEXT_MISTRAL_7B_HF = {
    "_source": "llava-hf/llava-v1.6-mistral-7b-hf (transformers 4.39.0.dev0) as NVIDIA/TensorRT-LLM transcribes it "
    "in tests/unittest/_torch/modeling/test_modeling_llava_next.py @ b93e14ca093e446615f3009cae6ca5a33c4f2f56 "
    "(LLAVA_NEXT_7B_CONFIG; its vision num_hidden_layers 2 is marked there '24 layers for full model')",
    "config": {
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": NEXT_PINPOINTS,
        "image_token_index": 32000,
        "model_type": "llava_next",
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
            "architectures": ["MistralForCausalLM"],
            "intermediate_size": 14336,
            "max_position_embeddings": 32768,
            "model_type": "mistral",
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "torch_dtype": "bfloat16",
            "vocab_size": 32064,
        },
        "torch_dtype": "float16",
        "transformers_version": "4.39.0.dev0",
        "use_image_newline_parameter": True,
        "vision_config": CLIP_L14_336_VISION,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    },
}

#: the same conversion as Mistral's (one script, both ids); text: lmsys/vicuna-7b-v1.5, pad_token_id 32001
LLAVA_NEXT_VICUNA_7B_HF = {
    "_source": CONVERT_NEXT,
    "config": {
        "architectures": ["LlavaNextForConditionalGeneration"],
        "image_grid_pinpoints": NEXT_PINPOINTS,
        "image_token_index": 32000,
        "model_type": "llava_next",
        "pad_token_id": 32001,
        "text_config": {"model_type": "llama", "_name_or_path": "lmsys/vicuna-7b-v1.5"},
        "use_image_newline_parameter": True,
        "vision_config": CLIP_L14_336_VISION,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    },
}


def _onevision(text_model: str) -> dict:
    return {
        "_source": CONVERT_ONEVISION,
        "config": {
            "architectures": ["LlavaOnevisionForConditionalGeneration"],
            "image_grid_pinpoints": ONEVISION_PINPOINTS,
            "image_token_index": 151646,
            "video_token_index": 151647,
            "model_type": "llava_onevision",
            "text_config": {"model_type": "qwen2", "_name_or_path": text_model},
            "use_image_newline_parameter": True,
            "vision_aspect_ratio": "anyres_max_9",
            "vision_config": {**SIGLIP_SO400M_384_VISION, "num_hidden_layers": 26, "vision_use_head": False},
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
        },
    }


LLAVA_ONEVISION_05B_HF = _onevision("Qwen/Qwen2-0.5B-Instruct")
LLAVA_ONEVISION_7B_HF = _onevision("Qwen/Qwen2-7B-Instruct")

#: the llava-hf checkpoints, by hub id
LLAVA_HF = {
    "llava-hf/llava-1.5-7b-hf": LLAVA_15_7B_HF,
    "llava-hf/llava-1.5-13b-hf": LLAVA_15_13B_HF,
    "llava-hf/llava-v1.6-mistral-7b-hf": LLAVA_NEXT_MISTRAL_7B_HF,
    "llava-hf/llava-v1.6-vicuna-7b-hf": LLAVA_NEXT_VICUNA_7B_HF,
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": LLAVA_ONEVISION_05B_HF,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": LLAVA_ONEVISION_7B_HF,
}

#: the original (haotian-liu/LLaVA) checkpoints' config.json; every key but the text model's
ORIGINAL = {
    "liuhaotian/llava-v1.5-7b": {
        "_source": "liuhaotian/llava-v1.5-7b config.json (transformers 4.31.0), vendored copies: "
        "FannierPeng/LLaVA-GRL llava-v1.5-7b/config.json @ f02227619056760e9786890139a6a69b1094dc05 and "
        "ymtuan/NTU-2025-Fall-DLCV llava-v1.5-7b/config.json @ 7b4f4a2eef447eb537704f15166826558cc1aa64 (identical)",
        "config": {
            "architectures": ["LlavaLlamaForCausalLM"],
            "freeze_mm_mlp_adapter": False,
            "freeze_mm_vision_resampler": False,
            "image_aspect_ratio": "pad",
            "mm_hidden_size": 1024,
            "mm_projector_type": "mlp2x_gelu",
            "mm_resampler_type": None,
            "mm_use_im_patch_token": False,
            "mm_use_im_start_end": False,
            "mm_vision_select_feature": "patch",
            "mm_vision_select_layer": -2,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "model_type": "llava",
            "torch_dtype": "float16",
            "tune_mm_mlp_adapter": False,
            "tune_mm_vision_resampler": False,
            "unfreeze_mm_vision_tower": False,
            "use_mm_proj": True,
            "vocab_size": 32000,
        },
    },
    "liuhaotian/llava-v1.6-vicuna-7b": {
        "_source": "liuhaotian/llava-v1.6-vicuna-7b config.json (transformers 4.36.2) as PaddleMIX's test transcribes "
        "it ('copy from https://huggingface.co/liuhaotian/llava-v1.6-vicuna-7b/blob/main/config.json'): "
        "little1d/PaddleMIX tests/models/test_llava.py @ d20bb20caed8e29df39f5ed81d6ca0e2c420950e; "
        "llava-v1.6-vicuna-13b's, in the same file @ 0370b6a02aa4b6685530e16d5352f8fa9a7a45bc, has the same "
        "mm_* keys",
        "config": {
            "architectures": ["LlavaLlamaForCausalLM"],
            "image_aspect_ratio": "anyres",
            "image_crop_resolution": 224,
            "image_grid_pinpoints": NEXT_PINPOINTS,
            "image_split_resolution": 224,
            "mm_hidden_size": 1024,
            "mm_patch_merge_type": "spatial_unpad",
            "mm_projector_type": "mlp2x_gelu",
            "mm_resampler_type": None,
            "mm_use_im_patch_token": False,
            "mm_use_im_start_end": False,
            "mm_vision_select_feature": "patch",
            "mm_vision_select_layer": -2,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "mm_vision_tower_lr": 2e-06,
            "model_type": "llava",
            "torch_dtype": "bfloat16",
            "unfreeze_mm_vision_tower": True,
            "use_mm_proj": True,
            "vocab_size": 32000,
        },
    },
}

#: the preset towers whose vision config was read (by preset name of dcr_mllm/presets/real.py)
TOWERS = {
    "clip-l14-336": {
        "_source": "the vision_config of llava-hf/llava-1.5-7b-hf (above), which its conversion took from "
        "openai/clip-vit-large-patch14-336; processor: the same checkpoint's preprocessor_config.json",
        "family": "clip",
        "vision_config": CLIP_L14_336_VISION,
        "preprocessor_config.json": CLIP_L14_336_PREPROCESSOR,
    },
    "siglip-so400m-384": {
        "_source": "see SIGLIP_SO400M_384_VISION",
        "family": "siglip",
        "vision_config": SIGLIP_SO400M_384_VISION,
    },
}

SD21_BASE = {
    "_source": "stabilityai/stable-diffusion-2-1-base snapshot 5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06 (diffusers "
    "0.21.4), vendored copy: Wakals/GASCOL stable-diffusion-2-1-base/{unet/config.json,vae/config.json,"
    "model_index.json} @ dc7e19015ccc567098f5ac097bacb9404840ffbd",
    "model_index.json": {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]},
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": True,
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
}


def published(table: dict, name: str) -> dict:
    """A deep copy of one entry (tests change theirs freely)."""
    return copy.deepcopy(table[name])
