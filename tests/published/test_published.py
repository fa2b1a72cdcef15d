"""Every documented route on the published layouts (tests/published/configs.py): which preset tower fits
which LLaVA checkpoint, swap-tower, convert-llava and the dcr_llava plugin at published depth,
resolution, feature layer and tiles (tiny width), and the presets table against the transcriptions."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from published_configs import LLAVA_HF, ORIGINAL, SD21_BASE, TOWERS
from safetensors import safe_open

from dcr_mllm.cli import main
from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower
from dcr_mllm.llava.checkpoints.compat import preset_spec
from dcr_mllm.llava.checkpoints.formats import FORMATS
from dcr_mllm.llava.checkpoints.formats import LLAVA_HF as LLAVA_HF_FORMATS
from dcr_mllm.presets.real import BACKBONES, DENOISERS

#: the preset that fits each published checkpoint; every other preset is refused
FITS = {
    "llava": "clip-l14-336",
    "llava_next": "clip-l14-336",
    "llava_onevision": "siglip-so400m-384",
    "original": "clip-l14-336",
}
VISION_SETTINGS = ("vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints")


def preset_tower(name: str) -> Tower:
    return Tower(name, Path(name), preset_spec(name), {}, {}, None)


def test_the_presets_table_is_the_published_configs():
    for name, entry in TOWERS.items():
        vision, preset = entry["vision_config"], BACKBONES[name]
        assert (preset.family, preset.image_size, preset.patch_size) == (
            entry["family"],
            vision["image_size"],
            vision["patch_size"],
        )
        assert (preset.hidden_size, preset.num_layers, preset.intermediate_size) == (
            vision["hidden_size"],
            vision["num_hidden_layers"],
            vision["intermediate_size"],
        )
    sd, unet, vae = DENOISERS["sd21-base"], SD21_BASE["unet/config.json"], SD21_BASE["vae/config.json"]
    downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    assert sd.cross_attention_dim == unet["cross_attention_dim"] == 1024
    assert (sd.latent_channels, sd.vae_downsample) == (vae["latent_channels"], downsample) == (unet["in_channels"], 8)
    assert sd.resolution == unet["sample_size"] * downsample == 512


@pytest.mark.parametrize("hub_id", list(LLAVA_HF))
def test_exactly_the_fitting_preset_passes_and_the_others_are_refused_in_one_line(hub_id):
    config = LLAVA_HF[hub_id]["config"]
    kind = LLAVA_HF_FORMATS[config["model_type"]]
    fitting = FITS[config["model_type"]]
    for name in BACKBONES:
        fit = kind.config_fit(config, LLAVA_HF[hub_id].get("preprocessor_config.json"), preset_tower(name), False)
        if name == fitting:
            assert fit.problems == [], (name, fit.problems)
            continue
        line = fit.refusal(name, hub_id)
        assert fit.problems and "\n" not in line, name
        assert line.endswith(f"(enhance {fitting})"), line  # the refusal names what would fit
        assert line.count("layers:") <= 1, line
    if config["model_type"] == "llava_onevision":  # 26 of so400m's 27 layers, reading the tower's -2
        fit = kind.config_fit(config, None, preset_tower(fitting), False)
        assert fit.notes == [
            "layers: the checkpoint keeps 26 of the tower's 27; it reads layer -1 of 26 = the tower's -2"
        ]


@pytest.mark.parametrize("hub_id", list(ORIGINAL))
def test_an_original_checkpoint_is_checked_against_the_preset_it_names(hub_id, tmp_path):
    """Its mm_vision_tower (openai/clip-vit-large-patch14-336) is not downloaded: the preset's shape is used."""
    config = ORIGINAL[hub_id]["config"]
    checkpoint = Checkpoint(tmp_path, "original", FORMATS["original"].prefixes, config, {}, {}, None, ())
    for name in BACKBONES:
        fit = FORMATS["original"].check(checkpoint, preset_tower(name), False)
        if name == FITS["original"]:
            assert fit.problems == [] and not fit.notes, fit
        else:
            line = fit.refusal(name, hub_id)
            assert fit.problems and "\n" not in line and line.endswith("(enhance clip-l14-336)"), line
    wrong = FORMATS["original"].check(checkpoint, preset_tower("clip-l14-224"), False)
    assert "image size: checkpoint 336, tower 224" in wrong.problems


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def stored(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            found |= {k: f.get_tensor(k) for k in f.keys()}
    return found


def tower_tensors(tower: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("vision_model."): v for k, v in stored(tower).items()}


@pytest.mark.parametrize("hub_id", list(LLAVA_HF))
def test_swap_tower_into_each_published_llava_hf_layout(hub_id, published_llava, published_tower, tmp_path, capsys):
    src = published_llava(hub_id)
    model_type = LLAVA_HF[hub_id]["config"]["model_type"]
    tower = published_tower(FITS[model_type])

    code, out, err = run(capsys, "swap-tower", "--llava", src, "--tower", tower, "--output", tmp_path / "dst")

    assert code == 0, err
    old, new = json.loads((src / "config.json").read_text()), json.loads((tmp_path / "dst" / "config.json").read_text())
    published = LLAVA_HF[hub_id]["config"]
    for key in VISION_SETTINGS:  # the published settings, kept
        assert new.get(key, published.get(key)) == old.get(key, published.get(key)) == published.get(key), key
    for key in ("num_hidden_layers", "image_size", "patch_size"):
        assert new["vision_config"][key] == published["vision_config"][key], key
    expected = tower_tensors(tower)
    swapped = {k: v for k, v in stored(tmp_path / "dst").items() if k.startswith(("vision_tower.", "model.vision"))}
    assert swapped and all(
        torch.equal(v, expected[k.split("vision_tower.")[-1].removeprefix("vision_model.")].to(v.dtype))
        for k, v in swapped.items()
    )
    kept = published["vision_config"]["num_hidden_layers"]
    assert not any(f"layers.{kept}." in k for k in swapped)  # OneVision: the tower's 27th layer stays out
    if model_type == "llava_onevision":
        assert "it reads layer -1 of 26 = the tower's -2" in out


def test_a_preset_tower_of_another_layout_is_refused_in_one_line_saying_what_fits(
    published_llava, published_tower, tmp_path, capsys
):
    """A CLIP ViT-L/14-336 into OneVision (SigLIP so400m, 384 px, 26 layers): refused, nothing written."""
    src = published_llava("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    dst = tmp_path / "out" / "dst"
    dst.parent.mkdir()

    code, out, err = run(
        capsys, "swap-tower", "--llava", src, "--tower", published_tower("clip-l14-336"), "--output", dst
    )

    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert "it takes a siglip tower of 384 px / patch 14, width 16, at least 26 layers" in err
    assert not dst.exists() and list(dst.parent.iterdir()) == []


@pytest.mark.parametrize("hub_id", list(ORIGINAL))
def test_swap_tower_into_each_published_original_layout(hub_id, published_original, published_tower, tmp_path, capsys):
    src, tower = published_original(hub_id), published_tower("clip-l14-336")
    dst = tmp_path / "swapped-llava"

    code, _, err = run(capsys, "swap-tower", "--llava", src, "--tower", tower, "--output", dst)

    assert code == 0, err
    config = json.loads((dst / "config.json").read_text())
    published = ORIGINAL[hub_id]["config"]
    for key in ("mm_vision_select_layer", "mm_vision_select_feature", "mm_patch_merge_type", "image_aspect_ratio"):
        assert config.get(key) == published.get(key), key
    assert config["mm_vision_tower"] == str(dst.resolve() / "vision_tower")
    expected = tower_tensors(tower)
    inside = {k: v for k, v in stored(dst).items() if k.startswith("model.vision_tower.")}
    assert bool(inside) == published["unfreeze_mm_vision_tower"]  # v1.6 stores its (fine-tuned) tower
    assert all(torch.equal(v, expected[k.split("vision_model.")[-1]].to(v.dtype)) for k, v in inside.items())


@pytest.mark.parametrize(
    ("hub_id", "llava_hf"),
    [
        ("liuhaotian/llava-v1.5-7b", "llava-hf/llava-1.5-7b-hf"),
        ("liuhaotian/llava-v1.6-vicuna-7b", "llava-hf/llava-v1.6-vicuna-7b-hf"),
    ],
)
def test_convert_llava_writes_the_settings_llava_hf_published(hub_id, llava_hf, published_original, tmp_path, capsys):
    code, _, err = run(capsys, "convert-llava", "--input", published_original(hub_id), "--output", tmp_path / "hf")

    assert code == 0, err
    converted, published = json.loads((tmp_path / "hf" / "config.json").read_text()), LLAVA_HF[llava_hf]["config"]
    assert converted["model_type"] == published["model_type"]
    assert converted["architectures"] == published["architectures"]
    for key in VISION_SETTINGS:  # (use_image_newline_parameter: read by no class of the pinned transformers)
        assert converted.get(key) == published.get(key), key
    vision = published["vision_config"]
    for key in ("model_type", "num_hidden_layers", "image_size", "patch_size"):
        assert converted["vision_config"][key] == vision[key], key


def test_dcr_llava_loads_a_tower_into_the_published_onevision_layout(published_llava, published_tower):
    """The lmms-eval plugin, on 26 kept layers of a 27-layer so400m-384 tower reading -1."""
    from dcr_mllm.models.dcr_llava import DcrLlava

    src, tower = published_llava("llava-hf/llava-onevision-qwen2-0.5b-ov-hf"), published_tower("siglip-so400m-384")
    plugin = DcrLlava(pretrained=str(src), vision_tower=str(tower), device="cpu", device_map="cpu")

    loaded = plugin.model.model.vision_tower.state_dict()
    reference = transformers.SiglipVisionModel.from_pretrained(tower).state_dict()
    assert any("layers.25." in k for k in loaded) and not any("layers.26." in k for k in loaded)
    assert any(k.startswith(("head.", "vision_model.head.")) for k in reference) and loaded.keys() < reference.keys()
    assert all(torch.equal(loaded[k], reference[k].to(loaded[k].dtype)) for k in loaded)
    assert plugin.model.config.vision_feature_layer == -1


def shipped_enhance_configs():
    repo = Path(__file__).resolve().parents[2]
    return sorted(p for p in (repo / "stages" / "configs").rglob("enhance*.yaml") if p.parent.name != "base")


def test_every_shipped_real_enhance_config_builds_on_the_published_models():
    """Each paper config's tower preset and denoiser, built on the meta device from the transcribed configs:
    the projector maps the tower's global width to the published UNet's cross-attention width."""
    from diffusers import UNet2DConditionModel

    from dcr_mllm.config import load_config
    from dcr_mllm.diffusion.projector import ConditionProjector
    from dcr_mllm.enhance.config import EnhanceConfig

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD21_BASE["unet/config.json"])
    context_width = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features
    real = 0
    for path in shipped_enhance_configs():
        cfg = load_config(EnhanceConfig, path)
        if cfg.tower not in BACKBONES:  # the tiny and world configs
            continue
        real += 1
        preset, denoiser = BACKBONES[cfg.tower], DENOISERS[cfg.denoiser]
        assert denoiser.cross_attention_dim == context_width == 1024, path
        with torch.device("meta"):
            projector = ConditionProjector(cfg.projector.input_dim or preset.embed_dim, denoiser.cross_attention_dim)
            condition = projector.project(torch.empty(2, preset.embed_dim))
        assert condition.shape == (2, context_width), path
        if cfg.tower in TOWERS:  # the tower itself, at published size
            entry = TOWERS[cfg.tower]
            vision_class = "CLIPVisionModel" if entry["family"] == "clip" else "SiglipVisionModel"
            config_class = vision_class.replace("Model", "Config")
            with torch.device("meta"):
                vision = getattr(transformers, vision_class)(
                    getattr(transformers, config_class)(**entry["vision_config"])
                )
            vision = getattr(vision, "vision_model", vision)  # transformers 5 builds it without that level
            assert vision.embeddings.num_patches == (preset.image_size // preset.patch_size) ** 2, path
            assert len(vision.encoder.layers) == preset.num_layers, path
    assert real >= 12  # six backbones, ours and upstream's recipe
