"""The transcriptions (``configs.py``) importable as ``published_configs`` by this folder's tests
(the tests folder is no package), and published-topology LLaVA checkpoints and towers of tiny width."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("published_configs", Path(__file__).with_name("configs.py"))
published_configs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("published_configs", published_configs)
_spec.loader.exec_module(published_configs)

#: the width every published-topology model is shrunk to (layers, image and patch size, feature layer,
#: select strategy, tiles and projector type stay the published ones)
WIDTH = 16
TOWER_OF = {"llava": "clip-l14-336", "llava_next": "clip-l14-336", "llava_onevision": "siglip-so400m-384"}


def shrink(vision: dict, width: int = WIDTH) -> dict:
    """A published vision config at ``width``: every other key (depth, image and patch size, head) kept."""
    shrunk = {k: v for k, v in vision.items() if not k.startswith("_")}
    shrunk |= {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2}
    if "projection_dim" in shrunk:
        shrunk["projection_dim"] = width
    return shrunk


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def save_tower(preset: str, out, seed: int = 11):
    """A preset tower at tiny width, its published depth and resolution, saved as an enhanced tower is
    (vision model, safetensors, the tower's image processor); ``seed`` draws its weights."""
    import transformers

    entry = published_configs.TOWERS[preset]
    vision = shrink(entry["vision_config"])
    if entry["family"] == "clip":
        config = transformers.CLIPVisionConfig(**vision)
        model = _seeded(lambda: transformers.CLIPVisionModel(config), seed)
        processor = {k: v for k, v in entry["preprocessor_config.json"].items() if k != "processor_class"}
    else:
        config = transformers.SiglipVisionConfig(**vision)
        model = _seeded(lambda: transformers.SiglipVisionModel(config), seed)
        size = vision["image_size"]
        processor = transformers.SiglipImageProcessor(size={"height": size, "width": size}).to_dict()
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def save_llava_hf(hub_id: str, llama, out):
    """A llava-hf checkpoint of ``hub_id``'s published vision side (tiny width) and vision settings, with the
    tiny Llama as its language model and the processor its conversion wrote (float16, 4+ shards)."""
    import transformers
    from transformers import AddedToken, AutoTokenizer, LlamaConfig

    published = published_configs.published(published_configs.LLAVA_HF, hub_id)["config"]
    model_type = published["model_type"]
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if model_type == "llava_onevision":
        tokenizer.add_tokens(AddedToken("<video>", special=True, normalized=False), special_tokens=True)
    text = LlamaConfig.from_pretrained(llama)
    text.vocab_size = -(-len(tokenizer) // 64) * 64
    keep = ("vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints", "projector_hidden_act")
    settings = {k: published[k] for k in keep if k in published}
    settings |= {"use_image_newline_parameter": True} if "use_image_newline_parameter" in published else {}
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if model_type == "llava_onevision":
        settings["video_token_index"] = tokenizer.convert_tokens_to_ids("<video>")
    config_class = {"llava": "LlavaConfig", "llava_next": "LlavaNextConfig", "llava_onevision": "LlavaOnevisionConfig"}
    config = getattr(transformers, config_class[model_type])(
        text_config=text,
        vision_config=shrink(published["vision_config"]),
        image_token_index=image_token,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    model_class = published["architectures"][0]
    model = _seeded(lambda: getattr(transformers, model_class)(config).to(torch.float16), 13)
    model.save_pretrained(out, max_shard_size="200KB")
    tower = published_configs.TOWERS[TOWER_OF[model_type]]
    if model_type == "llava_onevision":
        size = published["vision_config"]["image_size"]
        pixels = {"size": {"height": size, "width": size}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        processor = transformers.LlavaOnevisionProcessor(
            tokenizer=tokenizer,
            image_processor=transformers.LlavaOnevisionImageProcessor(
                **pixels, image_grid_pinpoints=published["image_grid_pinpoints"]
            ),
            video_processor=transformers.LlavaOnevisionVideoProcessor(**pixels),
            vision_feature_select_strategy="full",
            num_image_tokens=(size // published["vision_config"]["patch_size"]) ** 2,
        )
    else:
        fields = {k: v for k, v in tower["preprocessor_config.json"].items() if k not in ("processor_class",)}
        fields.pop("image_processor_type")
        if model_type == "llava":
            image_processor = transformers.CLIPImageProcessor(**fields)
            processor_class = transformers.LlavaProcessor
        else:
            image_processor = transformers.LlavaNextImageProcessor(
                **fields, image_grid_pinpoints=published["image_grid_pinpoints"]
            )
            processor_class = transformers.LlavaNextProcessor
        processor = processor_class(
            tokenizer=tokenizer,
            image_processor=image_processor,
            patch_size=published["vision_config"]["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    processor.save_pretrained(out)
    return out


def save_original(hub_id: str, llama, tower_dir, out):
    """An original LLaVA checkpoint with ``hub_id``'s published mm_* settings: the tiny Llama, a projector
    from the tower's width, ``mm_vision_tower`` pointing at ``tower_dir`` (a copy of the base tower, at
    tiny width), the tower stored in the shards where the published config unfreezes it (v1.6)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    published = published_configs.published(published_configs.ORIGINAL, hub_id)["config"]
    config = json.loads((llama / "config.json").read_text())
    with safe_open(llama / "model.safetensors", "pt") as f:
        language = {k: f.get_tensor(k).to(torch.float16) for k in f.keys()}
    width = config["hidden_size"]
    generator = torch.Generator().manual_seed(14)
    second = {
        "model.mm_projector.0.weight": torch.randn(width, WIDTH, generator=generator),
        "model.mm_projector.0.bias": torch.randn(width, generator=generator),
        "model.mm_projector.2.weight": torch.randn(width, width, generator=generator),
        "model.mm_projector.2.bias": torch.randn(width, generator=generator),
    }
    if published.get("mm_patch_merge_type") == "spatial_unpad":
        second["model.image_newline"] = torch.randn(width, generator=generator)
    if published.get("unfreeze_mm_vision_tower"):
        with safe_open(tower_dir / "model.safetensors", "pt") as f:
            # as original LLaVA stores its CLIPVisionModel: with the vision_model level
            prefix = "model.vision_tower.vision_tower."
            second |= {prefix + "vision_model." + k.removeprefix("vision_model."): f.get_tensor(k) for k in f.keys()}
    files = {"model-00001-of-00002.safetensors": language, "model-00002-of-00002.safetensors": second}
    for name, tensors in files.items():
        save_file({k: v.to(torch.float16) for k, v in tensors.items()}, out / name, metadata={"format": "pt"})
    weight_map = {k: name for name, tensors in files.items() for k in tensors}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    text = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "dtype", "torch_dtype")}
    mm = {k: v for k, v in published.items() if k != "vocab_size"}
    merged = text | mm | {"mm_hidden_size": WIDTH, "mm_vision_tower": str(tower_dir)}
    (out / "config.json").write_text(json.dumps(merged, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy2(llama / name, out / name)
    return out


@pytest.fixture(scope="session")
def published_tower(tmp_path_factory):
    """published_tower(preset) -> that preset's tower at tiny width and published depth (built once)."""
    made = {}

    def make(preset: str):
        if preset not in made:
            made[preset] = save_tower(preset, tmp_path_factory.mktemp(preset))
        return made[preset]

    return make


@pytest.fixture(scope="session")
def published_llava(tiny, tmp_path_factory):
    """published_llava(hub_id) -> a llava-hf checkpoint of that published vision topology (built once)."""
    made = {}

    def make(hub_id: str):
        if hub_id not in made:
            made[hub_id] = save_llava_hf(hub_id, tiny["llama"], tmp_path_factory.mktemp(hub_id.split("/")[1]))
        return made[hub_id]

    return make


@pytest.fixture(scope="session")
def published_original(tiny, published_tower, tmp_path_factory):
    """published_original(hub_id) -> an original LLaVA checkpoint with those published mm_* settings."""
    made = {}

    def make(hub_id: str):
        if hub_id not in made:
            base = save_tower("clip-l14-336", tmp_path_factory.mktemp("base"), seed=21)  # not the swapped-in one
            name = hub_id.split("/")[1]
            made[hub_id] = save_original(hub_id, tiny["llama"], base, tmp_path_factory.mktemp(name))
        return made[hub_id]

    return make
