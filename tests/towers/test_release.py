"""Released enhanced towers (DIVA, GenHancer, DCR): every preset's layout as its authors save it, at
real size on the meta device and at small width through `convert-tower --preset`; digests, bases and
sources are checked, and bad input is one line."""

import dataclasses
import hashlib
import json
from collections import OrderedDict

import pytest
import torch
from open_clip.factory import get_model_config
from open_clip.model import CLIP, CustomTextCLIP
from transformers import CLIPModel, SiglipModel

from dcr_mllm.cli import main
from dcr_mllm.errors import DcrError
from dcr_mllm.presets import real, released
from dcr_mllm.presets.real import Backbone, Digest, resolve
from dcr_mllm.presets.released import RELEASED
from dcr_mllm.towers import convert, convert_source, convert_text, inspect_tower, load_tower
from tests.towers.test_convert import TINY_TOWER_CFG, figures, openai_clip, perturbed, run

DIVA = [name for name, tower in RELEASED.items() if tower.method == "DIVA"]
HF_RELEASES = [name for name, tower in RELEASED.items() if tower.format == "hf"]


def whole_model_on_meta(model_name: str) -> torch.nn.Module:
    """open_clip's whole model (image and text side) as the release's library builds it, with no memory."""
    cfg = dict(get_model_config(model_name))
    custom = cfg.pop("custom_text", False)
    cfg.pop("init_logit_bias", None)
    with torch.device("meta"):
        return (CustomTextCLIP if custom else CLIP)(**cfg)


def test_every_released_backbone_has_one_preset_per_method_with_its_source():
    bases = {
        method: {t.base for t in RELEASED.values() if t.method == method} for method in ("DIVA", "GenHancer", "DCR")
    }
    six = {"clip-l14-224", "clip-l14-336", "metaclip-l14", "metaclip-h14", "siglip-so400m-224", "siglip-so400m-384"}
    assert bases["GenHancer"] == bases["DCR"] == six
    assert bases["DIVA"] == six | {"apple/DFN5B-CLIP-ViT-H-14", "apple/DFN5B-CLIP-ViT-H-14-378"}
    for tower in RELEASED.values():
        assert tower.name.startswith(f"{tower.method.lower()}-") and tower.reported and tower.format in released.FORMATS
        assert 0 < tower.mmvp_vlm_base < tower.mmvp_vlm < 100  # every paper reports a gain over its base
        assert tower.on_hub == (tower.method != "DCR")
        if tower.base_backbone is not None:  # the base's architecture is what a folder is checked against
            assert tower.base_backbone.name == tower.base
    assert all(RELEASED[n].digest is not None and len(RELEASED[n].digest.sha256) == 64 for n in DIVA)


@pytest.mark.parametrize("name", DIVA)
def test_each_diva_file_is_its_named_open_clip_model_whole_in_fp32(name):
    """The published byte count is the named model's fp32 state dict, image and text side, plus the
    pickle's few hundred bytes per tensor: the architecture each preset names is the one DIVA saved."""
    tower = RELEASED[name]
    state = whole_model_on_meta(tower.open_clip_model).state_dict()
    tensor_bytes = sum(t.numel() * 4 for t in state.values())
    per_tensor = (tower.digest.size - tensor_bytes) / len(state)
    assert 300 < per_tensor < 360, (name, per_tensor)
    # the layout converts: every key is known (text side left out) and the vision tensors fit the model
    layout = convert_source.layout_of(state)
    assert layout == ("timm" if "siglip" in name else "vit")
    mapped = convert.map_keys(state, layout)
    assert any(k.endswith("layers.0.self_attn.q_proj.weight") for k in mapped)
    convert_source.fitted_source(state, layout, tower.open_clip_model, False, tower.path)
    if layout == "vit":  # with the base's tokenizer the text side converts too: every text key maps and fits
        assert len(convert_text.map_text_keys(convert_text.text_state(state))) > 100
        whole = convert_source.fitted_source(state, layout, tower.open_clip_model, False, tower.path, whole=True)
        assert whole.token_embedding.num_embeddings == 49408 and whole.attn_mask.shape == (77, 77)


def test_a_diva_file_for_another_resolution_is_refused_naming_the_first_tensor_that_differs():
    state = whole_model_on_meta(RELEASED["diva-clip-l14-336"].open_clip_model).state_dict()
    with pytest.raises(DcrError, match=r"ViT-L-14-quickgelu: visual.positional_embedding is \(577, 1024\) there"):
        convert_source.fitted_source(state, "vit", RELEASED["diva-clip-l14-224"].open_clip_model, False, "f.pth")


@pytest.fixture
def small_diva(tmp_path, monkeypatch):
    """diva-clip-l14-224 as DIVA saves it (an fp32 OrderedDict of the whole OpenAI-layout CLIP, .pth),
    at the width of the tiny tower; the preset names that width and the file's own digest."""
    model = openai_clip(TINY_TOWER_CFG)
    model.load_state_dict(perturbed(model))
    path = tmp_path / "OpenAI-ViT-L-14-224.pth"
    torch.save(OrderedDict((k, v.float()) for k, v in model.state_dict().items()), path)
    (tmp_path / "small.json").write_text(json.dumps(TINY_TOWER_CFG))
    digest = Digest(hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size, "this test")
    preset = dataclasses.replace(
        RELEASED["diva-clip-l14-224"], open_clip_model=str(tmp_path / "small.json"), digest=digest
    )
    monkeypatch.setitem(RELEASED, preset.name, preset)
    return model.visual.eval(), path


def test_a_diva_release_converts_with_its_digest_checked_and_the_source_forward_reproduced(
    small_diva, tmp_path, capsys
):
    visual, path = small_diva
    out = tmp_path / "hf"
    code, stdout, err = run(capsys, "--preset", "diva-clip-l14-224", path, "--output", out, "--allow-pickle")
    assert code == 0, err
    assert max(figures(stdout).values()) <= convert.TOLERANCE
    assert "size and SHA-256 are the published file's" in stdout
    assert "reported MMVP-VLM: 25.9 (base 19.3), baaivision/DIVA README.md" in stdout
    assert "text-side tensors left out" in stdout
    tower = load_tower(out).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(tower.global_embedding(pixels), visual(pixels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["other bytes", "one byte changed", "no pickle consent", "a folder", "model given"])
def test_a_diva_file_that_is_not_the_published_one_is_refused_in_one_line(small_diva, tmp_path, capsys, case):
    _, path = small_diva
    args = ["--preset", "diva-clip-l14-224", path, "--output", tmp_path / "hf", "--allow-pickle"]
    expected = {
        "other bytes": "bytes, diva-clip-l14-224's published file",
        "one byte changed": "has SHA-256",
        "no pickle consent": "--allow-pickle",
        "a folder": "is not a file; diva-clip-l14-224 is one state-dict file (OpenAI-ViT-L-14-224.pth)",
        "model given": "--preset diva-clip-l14-224 names the architecture",
    }[case]
    if case == "other bytes":
        path.write_bytes(path.read_bytes() + b"\0")
    elif case == "one byte changed":
        data = bytearray(path.read_bytes())
        data[-20] ^= 1
        path.write_bytes(bytes(data))
    elif case == "no pickle consent":
        args.remove("--allow-pickle")
    elif case == "a folder":
        args[2] = tmp_path
    else:
        args += ["--model", "ViT-L-14"]
    code, stdout, err = run(capsys, *args)
    assert code == 2 and stdout == "" and not (tmp_path / "hf").exists()
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def saved_as_genhancer_does(tiny: str, folder) -> torch.nn.Module:
    """A tiny full model, perturbed, saved as GenHancer's and DCR's training scripts save theirs:
    ``save_pretrained(save_path, safe_serialization=False)`` alone (no processor, no tokenizer). The
    transformers they pin (4.43.3, Continuous/requirements.txt line 100 in GenHancer, requirements.txt line 100
    in DCR) wrote ``config.json`` and the state dict pickled as
    ``pytorch_model.bin``; transformers 5 writes only safetensors, so those two files are written here."""
    model = (CLIPModel if tiny == "tiny-clip" else SiglipModel).from_pretrained(resolve(tiny)).eval()
    model.load_state_dict(perturbed(model))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


@pytest.fixture
def small_base(monkeypatch):
    """The GenHancer and DCR presets' bases at the tiny towers' shapes (the check is the same at any size)."""
    for tiny, base in (("tiny-clip", "clip-l14-224"), ("tiny-siglip", "siglip-so400m-384")):
        spec = inspect_tower(tiny)
        shape = (spec.family.name, spec.image_size, spec.patch_size, spec.hidden_size, spec.num_layers)
        monkeypatch.setitem(real.BACKBONES, base, Backbone(base, f"test/{tiny}", *shape, spec.global_dim, 1, 1))


@pytest.mark.parametrize(
    ("name", "tiny"), [("genhancer-clip-l14-224", "tiny-clip"), ("dcr-siglip-so400m-384", "tiny-siglip")]
)
def test_a_transformers_release_is_resaved_with_its_text_side_and_the_base_processor(
    name, tiny, small_base, tmp_path, capsys
):
    folder = tmp_path / RELEASED[name].path if RELEASED[name].path else tmp_path / "drive-folder"
    model = saved_as_genhancer_does(tiny, folder)
    assert {p.name for p in folder.iterdir()} == {"config.json", "pytorch_model.bin"}
    out = tmp_path / "hf"
    code, stdout, err = run(capsys, "--preset", name, folder, "--output", out, "--allow-pickle")
    assert code == 0, err
    assert figures(stdout) == {"embedding": 0.0, "layer -2": 0.0}
    assert "text side kept" in stdout and "has no tokenizer" in stdout and "no digest is published" in stdout
    assert f"reported MMVP-VLM: {RELEASED[name].mmvp_vlm}" in stdout
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    processor = json.loads((out / "preprocessor_config.json").read_text())
    tower = load_tower(out).eval()
    assert tower.has_text_side and tower.spec.image_size == model.config.vision_config.image_size
    if tiny == "tiny-siglip":
        assert processor["image_mean"] == [0.5] * 3 and processor["size"]["height"] == tower.spec.image_size
    else:
        assert processor["image_mean"][0] == pytest.approx(0.48145466)
    pixels = torch.randn(2, 3, tower.spec.image_size, tower.spec.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixels)
        expected = getattr(expected, "pooler_output", expected)
        assert torch.equal(tower.global_embedding(pixels), expected)


@pytest.mark.parametrize("case", ["other family", "no pickle consent", "a file", "missing"])
def test_a_transformers_release_that_is_not_the_preset_is_refused_in_one_line(small_base, tmp_path, capsys, case):
    folder = tmp_path / "release"
    saved_as_genhancer_does("tiny-siglip" if case == "other family" else "tiny-clip", folder)
    args = ["--preset", "genhancer-clip-l14-224", folder, "--output", tmp_path / "hf", "--allow-pickle"]
    expected = {
        "other family": "holds a siglip at",
        "no pickle consent": "--allow-pickle",
        "a file": "is not a folder; genhancer-clip-l14-224 is a save_pretrained folder",
        "missing": "no such file or folder; download it where the hub is reachable",
    }[case]
    if case == "no pickle consent":
        args.remove("--allow-pickle")
    elif case == "a file":
        args[2] = folder / "config.json"
    elif case == "missing":
        args[2] = tmp_path / "absent"
    code, stdout, err = run(capsys, *args)
    assert code == 2 and stdout == "" and not (tmp_path / "hf").exists()
    assert len(err.strip().splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("diva-siglip-so400m-384", ["hf download BAAI/DIVA SigLIP/SigLIP-ViT-SO-14-384.pth --revision 2355104"]),
        ("genhancer-metaclip-h14", ["hf download msj9817/GenHancer --include 'MetaCLIP/metaclip-h14-fullcc2.5b/*'"]),
        ("dcr-clip-l14-336", ["file share", "drive.google.com/drive/folders/1jMttMBINdNH4mxMxaaukhPBUL2HaMae0"]),
    ],
)
def test_a_release_that_cannot_be_fetched_says_how_to_place_it_by_hand(name, parts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache
    code, stdout, err = run(capsys, "--preset", name, "--output", tmp_path / "out")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    for part in [*parts, f"dcr-mllm convert-tower --preset {name} D"]:
        assert part in err, err


def test_the_presets_listing_names_every_release_with_source_format_digest_and_reported_score(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.split("Released enhanced towers")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert set(RELEASED) <= set(rows)
    assert "BAAI/DIVA: OpenAICLIP/OpenAI-ViT-L-14-224.pth @ 235510408513" in rows["diva-clip-l14-224"]
    assert "sha256 b140e5952f47, 1.71 GB" in rows["diva-clip-l14-224"]
    assert "33.3 (base 19.2)" in rows["dcr-clip-l14-224"] and "(by hand)" in rows["dcr-clip-l14-224"]
    assert "none published" in rows["genhancer-siglip-so400m-224"]


def test_a_transformers_release_without_a_tokenizer_takes_the_base_one(small_base, tmp_path, capsys):
    folder = tmp_path / "release"
    model = saved_as_genhancer_does("tiny-clip", folder)
    out = tmp_path / "hf"
    args = ["--preset", "genhancer-clip-l14-224", folder, "--output", out, "--allow-pickle"]
    code, stdout, err = run(capsys, *args, "--tokenizer", resolve("tiny-clip"))
    assert code == 0, err
    assert "has no tokenizer" not in stdout and "tokenizer: " in stdout
    tower = load_tower(out).eval()
    with torch.no_grad():
        ids = tower._tokenizer(["a red square"], return_tensors="pt").input_ids
        expected = model.get_text_features(input_ids=ids)
        assert torch.equal(tower.encode_text(["a red square"]), getattr(expected, "pooler_output", expected))
