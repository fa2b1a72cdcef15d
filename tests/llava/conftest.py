"""Tiny LLaVA checkpoints on disk, in the layouts real ones come in, for swap-tower and convert-llava.

- llava-hf, written by transformers' own ``save_pretrained`` (tiny Llama + the tiny CLIP tower's
  config, float16), then restyled to each key layout found in the wild: ``transformers5`` (as
  transformers 5 writes it: ``vision_tower.*`` without ``vision_model``), ``hub`` (llava-hf hub
  checkpoints: ``language_model.model.*``, ``vision_tower.vision_model.*``) and ``prefixed``
  (transformers 4.52-4.57: ``model.language_model.*``, ``model.vision_tower.vision_model.*``,
  ``lm_head.*``); sharded with an index, or one ``model.safetensors``.
- original LLaVA (``LlavaLlamaForCausalLM``): the tiny Llama's tensors plus ``model.mm_projector``,
  optionally with the tower stored inside (``model.vision_tower.vision_tower.*``), in two files:
  safetensors, or ``pytorch_model-*.bin`` pickles as the LLaVA-1.5 releases are.
  ``anyres``: LLaVA-1.6 (anyres tiles, ``spatial_unpad``, ``model.image_newline``).
- llava-hf LLaVA-NeXT (tiny CLIP) and LLaVA-OneVision (tiny SigLIP without its head, as the hub's) checkpoints,
  tiled in 32 px tiles (``PINPOINTS``), in the same key layouts (``make_llava_hf(style, sharded, family)``).
- "DCR" towers: the tiny CLIP (SigLIP) with every vision weight moved, saved by ``VisionTower.save``
  (the enhance stage's export), with its own normalisation.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ENHANCED_MEAN = [0.5, 0.4, 0.3]
ENHANCED_STD = [0.2, 0.25, 0.3]


def _llava_hf_key(saved_key: str, style: str) -> str:
    """A key as transformers 5 saves it, in another llava-hf layout."""
    if style == "transformers5":
        return saved_key
    key = (
        saved_key.replace("vision_tower.", "vision_tower.vision_model.", 1)
        if saved_key.startswith("vision_tower.")
        else saved_key
    )
    if style == "hub":
        return key
    if key.startswith("language_model.lm_head."):
        return key.removeprefix("language_model.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    return "model." + key


def _read_all(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = {}
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(directory / name, "pt") as f:
            shards[name] = {k: f.get_tensor(k) for k in f.keys()}
    return shards


#: the tiny NeXT/OneVision tile grid: pinpoints in whole 32 px tiles (the tiny towers' image size)
PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def _save_llava_hf(family: str, tiny, out: Path) -> Path:
    """A float16 llava-hf checkpoint of ``family`` ("llava", "llava_next": tiny CLIP; "llava_onevision":
    tiny SigLIP) in 4+ shards, with processor, tokenizer and generation config, as transformers saves it."""
    import transformers
    from transformers import (
        AddedToken,
        AutoImageProcessor,
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        SiglipVisionConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if family == "llava_onevision":
        tokenizer.add_tokens(AddedToken("<video>", special=True, normalized=False), special_tokens=True)
    text = LlamaConfig.from_pretrained(tiny["llama"])
    text.vocab_size = -(-len(tokenizer) // 64) * 64
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if family == "llava":
        config = transformers.LlavaConfig(
            text_config=text,
            vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
            image_token_index=image_token,
            image_seq_length=16,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    elif family == "llava_next":
        config = transformers.LlavaNextConfig(
            text_config=text,
            vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
            image_token_index=image_token,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    else:
        vision = SiglipVisionConfig.from_pretrained(
            tiny["siglip"], vision_use_head=False
        )  # as llava-onevision-*-hf: no pooling head
        config = transformers.LlavaOnevisionConfig(
            text_config=text,
            vision_config=vision,
            image_token_index=image_token,
            video_token_index=image_token + 2,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    config.pad_token_id = tokenizer.pad_token_id
    model_class = {
        "llava": "LlavaForConditionalGeneration",
        "llava_next": "LlavaNextForConditionalGeneration",
        "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    }[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = getattr(transformers, model_class)(config).to(torch.float16)
    model.save_pretrained(out, max_shard_size="40KB")
    if family == "llava":
        image_processor = AutoImageProcessor.from_pretrained(tiny["clip"])
        processor = transformers.LlavaProcessor(
            tokenizer=tokenizer,
            image_processor=image_processor,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        image_processor.save_pretrained(out)
    elif family == "llava_next":
        image_processor = transformers.LlavaNextImageProcessor.from_dict(
            {**AutoImageProcessor.from_pretrained(tiny["clip"]).to_dict(), "image_grid_pinpoints": PINPOINTS}
        )
        processor = transformers.LlavaNextProcessor(
            tokenizer=tokenizer,
            image_processor=image_processor,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    else:
        siglip = {
            k: v
            for k, v in AutoImageProcessor.from_pretrained(tiny["siglip"]).to_dict().items()
            if k in ("image_mean", "image_std", "size", "resample")
        }
        processor = transformers.LlavaOnevisionProcessor(
            tokenizer=tokenizer,
            image_processor=transformers.LlavaOnevisionImageProcessor(**siglip, image_grid_pinpoints=PINPOINTS),
            video_processor=transformers.LlavaOnevisionVideoProcessor(**siglip),
            vision_feature_select_strategy="full",
            num_image_tokens=16,
        )
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llava_hf_saved(tiny, tmp_path_factory):
    """A float16 llava-hf LLaVA-1.5 checkpoint in 4+ shards, with processor, tokenizer and generation config."""
    return _save_llava_hf("llava", tiny, tmp_path_factory.mktemp("llava_hf_saved"))


@pytest.fixture(scope="session")
def llava_family_saved(tiny, tmp_path_factory):
    """llava_family_saved(family) -> that family's tiny checkpoint as transformers saves it (built once)."""
    made = {}

    def make(family: str) -> Path:
        if family not in made:
            made[family] = _save_llava_hf(family, tiny, tmp_path_factory.mktemp(f"{family}_saved"))
        return made[family]

    return make


@pytest.fixture(scope="session")
def make_llava_hf(llava_hf_saved, llava_family_saved, tmp_path_factory):
    """make_llava_hf(style, sharded=True, family="llava") -> a llava-hf checkpoint directory in that key layout."""
    made = {}

    def make(style: str, sharded: bool = True, family: str = "llava") -> Path:
        if (style, sharded, family) in made:
            return made[style, sharded, family]
        saved = llava_hf_saved if family == "llava" else llava_family_saved(family)
        out = tmp_path_factory.mktemp(f"{family}_{style}_{'sharded' if sharded else 'single'}")
        for item in saved.iterdir():
            if not item.name.startswith("model"):
                shutil.copy2(item, out / item.name)
        shards = {
            name: {_llava_hf_key(k, style): v for k, v in tensors.items()} for name, tensors in _read_all(saved).items()
        }
        if sharded:
            index = json.loads((saved / "model.safetensors.index.json").read_text())
            for name, tensors in shards.items():
                save_file(tensors, out / name, metadata={"format": "pt"})
            index["weight_map"] = {_llava_hf_key(k, style): v for k, v in index["weight_map"].items()}
            (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        else:
            save_file(
                {k: v for tensors in shards.values() for k, v in tensors.items()},
                out / "model.safetensors",
                metadata={"format": "pt"},
            )
        made[style, sharded, family] = out
        return out

    return make


@pytest.fixture(scope="session")
def make_original(tiny, tmp_path_factory):
    """make_original(stored_tower=False, pickled=False, anyres=False) -> an original LLaVA-1.5 checkpoint (tiny Llama +
    projector); ``anyres``: LLaVA-1.6 (llava-v1.6-*: anyres tiles, spatial_unpad, ``model.image_newline``)."""
    made = {}

    def make(stored_tower: bool = False, pickled: bool = False, anyres: bool = False) -> Path:
        if (stored_tower, pickled, anyres) in made:
            return made[stored_tower, pickled, anyres]
        name = f"llava_original{'_tower' if stored_tower else ''}{'_bin' if pickled else ''}{'_v16' if anyres else ''}"
        out = tmp_path_factory.mktemp(name)
        llama = tiny["llama"]
        config = json.loads((llama / "config.json").read_text())
        with safe_open(llama / "model.safetensors", "pt") as f:
            language = {k: f.get_tensor(k).to(torch.float16) for k in f.keys()}
        generator = torch.Generator().manual_seed(2)
        width, vision_width = config["hidden_size"], 32
        projector = {
            "model.mm_projector.0.weight": torch.randn(width, vision_width, generator=generator),
            "model.mm_projector.0.bias": torch.randn(width, generator=generator),
            "model.mm_projector.2.weight": torch.randn(width, width, generator=generator),
            "model.mm_projector.2.bias": torch.randn(width, generator=generator),
        }
        if anyres:
            projector["model.image_newline"] = torch.randn(width, generator=generator)
        second = {k: v.to(torch.float16) for k, v in projector.items()}
        if stored_tower:
            with safe_open(tiny["clip"] / "model.safetensors", "pt") as f:
                second |= {
                    "model.vision_tower.vision_tower." + k: (f.get_tensor(k) + 0.01).to(torch.float16)
                    for k in f.keys()
                    if k.startswith("vision_model.")
                }
        stem, suffix = ("pytorch_model", "bin") if pickled else ("model", "safetensors")
        files = {f"{stem}-00001-of-00002.{suffix}": language, f"{stem}-00002-of-00002.{suffix}": second}
        for name, tensors in files.items():
            if pickled:
                torch.save(tensors, out / name)
            else:
                save_file(tensors, out / name, metadata={"format": "pt"})
        weight_map = {k: name for name, tensors in files.items() for k in tensors}
        (out / f"{stem}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config |= {
            "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": "llava_llama",
            "torch_dtype": "float16",
            "mm_vision_tower": str(tiny["clip"]),
            "mm_hidden_size": vision_width,
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_patch_merge_type": "flat",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "image_aspect_ratio": "pad",
            "tune_mm_mlp_adapter": False,
            "use_mm_proj": True,
            "tokenizer_model_max_length": 512,
            "tokenizer_padding_side": "right",
        }
        if anyres:
            config |= {
                "mm_patch_merge_type": "spatial_unpad",
                "image_aspect_ratio": "anyres",
                "image_grid_pinpoints": PINPOINTS,
            }
        config.pop("dtype", None)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy2(llama / name, out / name)
        made[stored_tower, pickled, anyres] = out
        return out

    return make


def _moved_tower(source: Path, out: Path) -> Path:
    """``source`` with every vision-encoder weight changed and its own mean/std, as ``enhance`` exports it."""
    from dcr_mllm.towers import load_tower

    tower = load_tower(source)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in tower.vision.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    tower.save(out)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    processor |= {"image_mean": ENHANCED_MEAN, "image_std": ENHANCED_STD}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


@pytest.fixture(scope="session")
def dcr_tower(tiny, tmp_path_factory):
    """The tiny CLIP with every vision-encoder weight changed and its own mean/std, as ``enhance`` exports it."""
    return _moved_tower(tiny["clip"], tmp_path_factory.mktemp("dcr_tower"))


@pytest.fixture(scope="session")
def dcr_siglip_tower(tiny, tmp_path_factory):
    """The tiny SigLIP, changed the same way (a tower for OneVision)."""
    return _moved_tower(tiny["siglip"], tmp_path_factory.mktemp("dcr_siglip_tower"))
