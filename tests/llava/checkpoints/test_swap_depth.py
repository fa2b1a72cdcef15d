"""swap-tower into a checkpoint that keeps fewer vision layers than the tower, as llava-hf's LLaVA-OneVision
keeps 26 of SigLIP so400m's 27: the tower's first layers go in, the layer the checkpoint reads is the
tower's same hidden state, and the swap report says which."""

import json
from types import SimpleNamespace

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import SiglipVisionConfig, SiglipVisionModel

from tests.llava.checkpoints.test_swap import leftovers, run, tensors, tower_key

#: transcribed from transformers' src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py
#: (huggingface/transformers, commit d058e0f712f346209059c8bbdcaaf5d9cd762075), which wrote the llava-hf
#: llava-onevision-qwen2-*-hf checkpoints: ``SiglipVisionConfig(hidden_size=1152, image_size=384,
#: intermediate_size=4304, num_attention_heads=16, num_hidden_layers=26,  # drop the last layer,
#: patch_size=14, vision_use_head=False)``, ``LlavaOnevisionConfig`` defaults ``vision_feature_layer=-1``,
#: ``vision_feature_select_strategy="full"`` (the processor too: ``vision_feature_select_strategy="full"``).
ONEVISION_VISION = {"num_hidden_layers": 26, "vision_use_head": False, "patch_size": 14, "image_size": 384}
ONEVISION_FEATURE_LAYER, ONEVISION_SELECT = -1, "full"
#: google/siglip-so400m-patch14-384's vision config: ``num_hidden_layers: 27`` (the tower enhanced from it)
SO400M_LAYERS = 27


def test_onevision_reads_the_so400m_towers_second_to_last_layer():
    from dcr_mllm.llava.checkpoints.compat import depth_fit

    problems, notes = depth_fit(
        "vision_feature_layer",
        ONEVISION_FEATURE_LAYER,
        ONEVISION_VISION["num_hidden_layers"],
        SimpleNamespace(num_layers=SO400M_LAYERS),
    )
    assert problems == []
    assert notes == ["layers: the checkpoint keeps 26 of the tower's 27; it reads layer -1 of 26 = the tower's -2"]


def _deeper_tower(source, out, extra=1):
    """A SigLIP tower like ``source`` (the tiny OneVision checkpoint's) with ``extra`` more layers, seeded."""
    config = SiglipVisionConfig.from_pretrained(source)
    config.num_hidden_layers += extra
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        SiglipVisionModel(config).save_pretrained(out)
    (out / "preprocessor_config.json").write_text((source / "preprocessor_config.json").read_text())
    return out


@pytest.fixture(scope="module")
def onevision_and_tower(make_llava_hf, dcr_siglip_tower, tmp_path_factory):
    """A tiny llava-hf OneVision (3 SigLIP layers, no head, reading -1, as ONEVISION_*) and a 4-layer tower."""
    src = make_llava_hf("transformers5", True, "llava_onevision")
    vision = json.loads((src / "config.json").read_text())["vision_config"]
    assert (vision["num_hidden_layers"], vision["vision_use_head"]) == (3, ONEVISION_VISION["vision_use_head"])
    config = json.loads((src / "config.json").read_text())
    assert config.get("vision_feature_layer", ONEVISION_FEATURE_LAYER) == ONEVISION_FEATURE_LAYER
    assert config["vision_feature_select_strategy"] == ONEVISION_SELECT
    return src, _deeper_tower(dcr_siglip_tower, tmp_path_factory.mktemp("siglip4"))


def test_swap_keeps_the_checkpoints_layers_and_reads_the_same_hidden_state(onevision_and_tower, tmp_path, capsys):
    src, tower = onevision_and_tower
    dst = tmp_path / "swapped"

    code, out, err = run(capsys, "--llava", src, "--tower", tower, "--output", dst)

    assert code == 0, err
    assert "layers: the checkpoint keeps 3 of the tower's 4; it reads layer -1 of 3 = the tower's -2" in out
    assert json.loads((dst / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    old, new = tensors(src), tensors(dst)
    assert list(new) == list(old)  # the tower's fourth layer and its head are not written
    assert sum(tower_key(key) is not None for key in new) == 53  # the checkpoint's 3 layers, no head
    model, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
        dst, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    stored = SiglipVisionModel.from_pretrained(tower, dtype=torch.float16).state_dict()
    loaded = model.model.vision_tower.state_dict()
    assert "encoder.layers.3.mlp.fc1.weight" in stored  # the tower's fourth layer: not in DST
    assert loaded.keys() < stored.keys() and all(torch.equal(loaded[k], stored[k].float()) for k in loaded)
    reference = SiglipVisionModel.from_pretrained(tower).to(torch.float16).to(torch.float32)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        read = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        tower_features = reference(pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(read, tower_features, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["tower too shallow", "feature layer"])
def test_a_checkpoint_the_tower_cannot_serve_is_refused_in_one_line(case, onevision_and_tower, tmp_path, capsys):
    import shutil

    src, tower = onevision_and_tower
    if case == "tower too shallow":  # the checkpoint keeps 3 layers, the tower has 2
        tower = _shallow_tower(src, tmp_path / "t")
        expected = "layers: the checkpoint keeps 3, the tower has 2; give a tower of at least 3 layers"
    else:
        src = shutil.copytree(src, tmp_path / "src")
        config = json.loads((src / "config.json").read_text()) | {"vision_feature_layer": -4}
        (src / "config.json").write_text(json.dumps(config))
        expected = "feature layer -4 (vision_feature_layer) does not exist in the checkpoint's 3 layers (it reads one of -3..3)"
    dst = tmp_path / "out" / "swapped"
    dst.parent.mkdir()

    code, out, err = run(capsys, "--llava", src, "--tower", tower, "--output", dst)

    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not dst.exists() and leftovers(dst.parent) == []


def _shallow_tower(checkpoint, out):
    """A 2-layer SigLIP of the checkpoint's tower shape."""
    vision = json.loads((checkpoint / "config.json").read_text())["vision_config"]
    config = SiglipVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"} | {"num_hidden_layers": 2})
    SiglipVisionModel(config).save_pretrained(out)
    return out


def test_dcr_llava_loads_the_deeper_tower_as_swap_tower_writes_it(onevision_and_tower):
    from dcr_mllm.models.dcr_llava import DcrLlava

    src, tower = onevision_and_tower
    plugin = DcrLlava(pretrained=str(src), vision_tower=str(tower), device="cpu", device_map="cpu")
    loaded = plugin.model.model.vision_tower.state_dict()
    reference = SiglipVisionModel.from_pretrained(tower).state_dict()
    assert any("layers.2." in k for k in loaded) and not any("layers.3." in k for k in loaded)
    assert loaded.keys() < reference.keys()
    assert all(torch.equal(loaded[k], reference[k].to(loaded[k].dtype)) for k in loaded)


def test_original_checkpoint_storing_fewer_layers_takes_the_towers_first_ones(make_original, dcr_tower, tmp_path):
    """An original checkpoint storing 2 of its 3-layer tower's layers (as original OneVision stores 26 of 27)."""
    import shutil

    from safetensors.torch import save_file

    from dcr_mllm.llava.checkpoints.swap import swap_tower

    src = shutil.copytree(make_original(stored_tower=True), tmp_path / "src-llava")
    shard = "model-00002-of-00002.safetensors"
    with safe_open(src / shard, "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if "encoder.layers.2." not in k}
    save_file(kept, src / shard, metadata={"format": "pt"})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if "encoder.layers.2." not in k}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    report = swap_tower(src, dcr_tower, tmp_path / "dst-llava")

    assert "  layers: the checkpoint stores 2 of the tower's 3: replaced by the tower's first 2" in report.lines()
    old, new = tensors(src), tensors(tmp_path / "dst-llava")
    assert new.keys() == old.keys() and not any("encoder.layers.2." in k for k in new)
    with safe_open(dcr_tower / "model.safetensors", "pt") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}
    replaced = [key for key in new if tower_key(key) is not None]
    assert any("encoder.layers.1." in k for k in replaced)
    for key in replaced:
        assert torch.equal(new[key], expected[tower_key(key)].to(torch.float16)), key
