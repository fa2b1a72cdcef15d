"""swap-tower into LLaVA-NeXT and LLaVA-OneVision (llava-hf) and original LLaVA-1.6 checkpoints:
only the tower changes, the tiles stay the checkpoint's, a tower that does not fit is refused."""

import json
import shutil

import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, CLIPVisionConfig, CLIPVisionModel

from tests.llava.checkpoints.test_swap import digest, leftovers, raw, run, tensors, tower_key

ENHANCED_MEAN, ENHANCED_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # the dcr towers' normalisation (conftest)
PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # the tiny NeXT/OneVision/v1.6 checkpoints' (conftest)
ARCHITECTURES = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
VISION_MODELS = {"llava_next": "CLIPVisionModel", "llava_onevision": "SiglipVisionModel"}
TOWER_TENSORS = {
    "llava_next": 55,
    "llava_onevision": 53,
}  # a 3-layer CLIP / SigLIP without its pooling head (the tower has one)


def tower_of(family, dcr_tower, dcr_siglip_tower):
    return dcr_tower if family == "llava_next" else dcr_siglip_tower


def generate(model_dir, family) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate three tokens about a wide (non-square) image, so anyres tiles it; (input ids, output ids)."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = getattr(transformers, ARCHITECTURES[family]).from_pretrained(model_dir, dtype=torch.float32)
    image = Image.new("RGB", (70, 30), (200, 30, 30))
    inputs = processor(images=image, text="USER: <image>\nWhat colour is it? ASSISTANT:", return_tensors="pt")
    assert inputs.pixel_values.shape[1] > 1  # the base image and its tiles
    with torch.no_grad():
        return inputs.input_ids, model.generate(**inputs, max_new_tokens=3, do_sample=False)


@pytest.mark.parametrize(
    "family,style",
    [
        ("llava_next", "transformers5"),
        ("llava_next", "hub"),
        ("llava_onevision", "transformers5"),
        ("llava_onevision", "prefixed"),
    ],
)
def test_swap_into_next_and_onevision(family, style, make_llava_hf, dcr_tower, dcr_siglip_tower, tmp_path, capsys):
    src, tower = make_llava_hf(style, True, family), tower_of(family, dcr_tower, dcr_siglip_tower)
    before = digest(src)
    dst = tmp_path / "swapped"

    code, out, err = run(capsys, "--llava", src, "--tower", tower, "--output", dst)

    assert code == 0, err
    assert digest(src) == before and leftovers(tmp_path) == []
    old, new = tensors(src), tensors(dst)
    assert list(new) == list(old)
    assert any(key.endswith("image_newline") for key in old)
    with safe_open(tower / "model.safetensors", "pt") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}
    replaced = 0
    for key, value in old.items():
        assert new[key].dtype == value.dtype == torch.float16
        if tower_key(key) is None:  # the LM, projector and image_newline
            assert torch.equal(raw(new[key]), raw(value)), key
        else:
            assert torch.equal(new[key], expected[tower_key(key)].to(torch.float16)), key
            replaced += 1
    assert replaced == TOWER_TENSORS[family]
    assert (
        f"replace {replaced} vision-tower tensors" in out and f"{ARCHITECTURES[family]}.from_pretrained accepts" in out
    )
    assert f"tiles kept: image_grid_pinpoints {PINPOINTS} in 32 px tiles" in out

    config, old_config = json.loads((dst / "config.json").read_text()), json.loads((src / "config.json").read_text())
    assert config == old_config  # the same tower shape: nothing in config.json changes
    processor, old_processor = (json.loads((d / "processor_config.json").read_text()) for d in (dst, src))
    sections = ["image_processor"] + (["video_processor"] if family == "llava_onevision" else [])
    for section in sections:
        assert processor[section] == old_processor[section] | {"image_mean": ENHANCED_MEAN, "image_std": ENHANCED_STD}
    assert processor["image_processor"]["image_grid_pinpoints"] == PINPOINTS
    assert {k: v for k, v in processor.items() if k not in sections} == {
        k: v for k, v in old_processor.items() if k not in sections
    }

    model, info = getattr(transformers, ARCHITECTURES[family]).from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    vision_class = getattr(transformers, VISION_MODELS[family])
    reference = vision_class.from_pretrained(tower, dtype=torch.float16).state_dict()
    loaded = model.model.vision_tower.state_dict()
    assert loaded.keys() <= reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in loaded)
    loaded_processor = AutoProcessor.from_pretrained(dst)
    assert list(loaded_processor.image_processor.image_mean) == ENHANCED_MEAN
    inputs, generated = generate(dst, family)
    assert generated.shape[1] == inputs.shape[1] + 3


def _tower(directory, **overrides):
    config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(CLIPVisionConfig(**(config | overrides))).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "case",
    [
        "wider",
        "image size",
        "patch size",
        "feature layer",
        "select strategy",
        "clip into onevision",
        "siglip into next",
        "tiles",
        "processor tiles",
    ],
)
def test_a_tower_that_does_not_fit_is_refused_in_one_line(case, make_llava_hf, dcr_tower, tiny, tmp_path, capsys):
    family = "llava_onevision" if case == "clip into onevision" else "llava_next"
    src, tower, flags = make_llava_hf("transformers5", True, family), dcr_tower, []
    config = json.loads((src / "config.json").read_text())
    if case == "wider":
        tower, expected = _tower(tmp_path / "t", hidden_size=48), "hidden size: checkpoint 32, tower 48"
    elif case == "image size":
        tower, expected = _tower(tmp_path / "t", image_size=48), "image size: checkpoint 32, tower 48"
    elif case == "patch size":
        tower, expected = _tower(tmp_path / "t", patch_size=4), "patch size: checkpoint 8, tower 4"
    elif case == "feature layer":
        config["vision_feature_layer"] = -4
        expected = "feature layer -4 (vision_feature_layer) does not exist in the tower's 3 layers"
    elif case == "select strategy":
        config["vision_feature_select_strategy"] = "full"
        expected = (
            "vision_feature_select_strategy 'full' leaves 17 features per tile of this clip tower, not the 4x4 grid"
        )
    elif case == "clip into onevision":
        flags = ["--allow-family-change"]
        expected = "family: a clip tower into a siglip-based LLaVA-OneVision checkpoint"
    elif case == "siglip into next":
        tower, expected = tiny["siglip"], "family: a siglip tower into a clip-based LLaVA-NeXT checkpoint"
    elif case == "tiles":
        config["image_grid_pinpoints"] = [[32, 48]]
        expected = "image_grid_pinpoints [32, 48] is not a whole number of the tower's 32 px tiles"
    processor = json.loads((src / "processor_config.json").read_text())
    if case == "processor tiles":
        processor["image_processor"]["crop_size"] = {"height": 48, "width": 48}
        expected = "image processor crop_size {'height': 48, 'width': 48}: the tiles must be the tower's image size 32"
    if case in ("feature layer", "select strategy", "tiles", "processor tiles"):
        src = shutil.copytree(src, tmp_path / "src")
        (src / "config.json").write_text(json.dumps(config))
        (src / "processor_config.json").write_text(json.dumps(processor))
    dst = tmp_path / "out" / "swapped"
    dst.parent.mkdir()

    code, out, err = run(capsys, "--llava", src, "--tower", tower, "--output", dst, *flags)

    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not dst.exists() and leftovers(dst.parent) == []


def test_original_v16_checkpoint_keeps_its_tiles_and_image_newline(make_original, dcr_tower, tmp_path):
    from dcr_mllm.llava.checkpoints.swap import swap_tower

    src = make_original(stored_tower=True, anyres=True)
    dst = tmp_path / "llava-v1.6-dcr"
    swap_tower(src, dcr_tower, dst)
    old, new = tensors(src), tensors(dst)
    assert "model.image_newline" in old and new.keys() == old.keys()
    with safe_open(dcr_tower / "model.safetensors", "pt") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in old.items():
        if tower_key(key) is None:
            assert torch.equal(raw(new[key]), raw(value)), key
        else:
            assert torch.equal(new[key], expected[tower_key(key)].to(torch.float16)), key
    config = json.loads((dst / "config.json").read_text())
    assert (config["image_grid_pinpoints"], config["mm_patch_merge_type"], config["image_aspect_ratio"]) == (
        PINPOINTS,
        "spatial_unpad",
        "anyres",
    )


@pytest.mark.parametrize("case", ["tiles", "select feature"])
def test_original_v16_refuses_a_tower_its_tiles_cannot_take(case, make_original, tmp_path, capsys):
    """With the checkpoint's own tower not on this machine, the tiles are checked against the new one."""
    src = shutil.copytree(make_original(anyres=True), tmp_path / "src-llava")
    config = json.loads((src / "config.json").read_text()) | {"mm_vision_tower": "no-such-org/no-such-tower"}
    if case == "tiles":
        tower, expected = (
            _tower(tmp_path / "t", image_size=48),
            "image_grid_pinpoints [32, 64] is not a whole number of the tower's 48 px tiles",
        )
    else:
        config["mm_vision_select_feature"] = "cls_patch"
        tower, expected = _tower(tmp_path / "t"), "mm_vision_select_feature 'cls_patch' leaves 17 features per tile"
    (src / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "--llava", src, "--tower", tower, "--output", tmp_path / "dst")
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_dcr_llava_swaps_into_next_and_onevision_in_memory(family, make_llava_hf, dcr_tower, dcr_siglip_tower):
    """The lmms-eval plugin loads NeXT/OneVision through llava_hf and swaps as swap-tower would write."""
    from dcr_mllm.errors import DcrError
    from dcr_mllm.models.dcr_llava import DcrLlava

    src, tower = make_llava_hf("transformers5", True, family), tower_of(family, dcr_tower, dcr_siglip_tower)
    plugin = DcrLlava(pretrained=str(src), vision_tower=str(tower), device="cpu", device_map="cpu")

    reference = getattr(transformers, VISION_MODELS[family]).from_pretrained(tower).state_dict()
    loaded = plugin.model.model.vision_tower.state_dict()
    assert loaded.keys() <= reference.keys() and all(
        torch.equal(loaded[k], reference[k].to(loaded[k].dtype)) for k in loaded
    )
    processor = plugin._image_processor
    saved = AutoProcessor.from_pretrained(src)
    parts = ["image_processor"] + (["video_processor"] if family == "llava_onevision" else [])
    for part in parts:
        new, old = getattr(processor, part), getattr(saved, part)
        assert type(new) is type(old)
        assert json.loads(new.to_json_string()) == json.loads(old.to_json_string()) | {
            "image_mean": ENHANCED_MEAN,
            "image_std": ENHANCED_STD,
        }

    other = dcr_siglip_tower if family == "llava_next" else dcr_tower
    with pytest.raises(DcrError, match="family: a .* tower into a .*-based LLaVA-"):
        DcrLlava(pretrained=str(src), vision_tower=str(other), device="cpu", device_map="cpu")
