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
from dcr_mllm.llava.checkpoints.formats import FORMATS, LLAVA_HF as LLAVA_HF_FORMATS
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
