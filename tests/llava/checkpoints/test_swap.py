"""swap-tower: only the vision tower changes, SRC is never touched, bad input leaves nothing behind."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
)

from dcr_mllm.cli import main
from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoints import swap
from dcr_mllm.llava.checkpoints.swap import swap_tower
from dcr_mllm.llava.shards import read_header
from dcr_mllm.towers.registry import registered

ENHANCED_MEAN = [0.5, 0.4, 0.3]  # the dcr_tower fixture's normalisation
CHECKPOINT_TOWER_TENSORS = 55  # a 3-layer CLIP vision model


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            found |= {k: f.get_tensor(k) for k in f.keys()}
    return found


def raw(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def tower_key(checkpoint_key: str) -> str | None:
    for prefix in ("model.vision_tower.vision_tower.", "model.vision_tower.", "vision_tower."):
        if checkpoint_key.startswith(prefix):
            rest = checkpoint_key.removeprefix(prefix)
            return rest if rest.startswith("vision_model.") else "vision_model." + rest
    return None


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building the inputs printed
    code = main(["swap-tower", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def answer(model_dir: Path) -> torch.Tensor:
    """One forward pass through the processor and model: the image features must fit the prompt."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    inputs = processor(images=image, text="USER: <image>\nWhat colour is it? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("style,sharded", [("transformers5", True), ("hub", True), ("hub", False), ("prefixed", True)])
def test_swap_replaces_exactly_the_vision_tower(make_llava_hf, dcr_tower, tmp_path, style, sharded):
    src = make_llava_hf(style, sharded)
    before = digest(src)
    dst = tmp_path / "swapped"

    report = swap_tower(src, dcr_tower, dst)

    assert digest(src) == before
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())
    old, new = tensors(src), tensors(dst)
    assert list(new) == list(old)
    with safe_open(dcr_tower / "model.safetensors", "pt") as f:
        tower = {k: f.get_tensor(k) for k in f.keys()}
    replaced = 0
    for key, value in old.items():
        assert new[key].dtype == value.dtype == torch.float16
        if tower_key(key) is None:
            assert torch.equal(raw(new[key]), raw(value)), key
        else:
            assert torch.equal(new[key], tower[tower_key(key)].to(torch.float16)), key
            assert not torch.equal(new[key], value)
            replaced += 1
    assert replaced == CHECKPOINT_TOWER_TENSORS
    if sharded:
        old_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
        assert json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"] == old_map
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    assert json.loads((dst / "preprocessor_config.json").read_text())["image_mean"] == ENHANCED_MEAN
    assert json.loads((dst / "processor_config.json").read_text())["image_processor"]["image_mean"] == ENHANCED_MEAN

    model, info = LlavaForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    expected = CLIPVisionModel.from_pretrained(dcr_tower, dtype=torch.float16).state_dict()
    loaded = model.model.vision_tower.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert torch.isfinite(answer(dst)).all()
    text = "\n".join(report.lines())
    assert f"replace {CHECKPOINT_TOWER_TENSORS} vision-tower tensors" in text and "byte-identical" in text
    assert "image_mean" in text and len(report.lines()) < 25
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["copied", "tower"])
def test_a_corrupted_tensor_fails_verification_and_leaves_no_output(
    make_llava_hf, dcr_tower, tmp_path, monkeypatch, target
):
    src, write_shard = make_llava_hf("hub"), swap.write_shard

    def write_and_corrupt(path, tensors, metadata=None):
        """Write a shard as planned, then flip one byte of its first copied (or tower) tensor."""
        digests = write_shard(path, tensors, metadata)
        victim = next(
            (t for k, t in read_header(path)[0].items() if (tower_key(k) is None) == (target == "copied")), None
        )
        if victim is not None:
            with open(path, "r+b") as f:
                f.seek(victim.start)
                byte = f.read(1)[0]
                f.seek(victim.start)
                f.write(bytes([byte ^ 1]))
        return digests

    monkeypatch.setattr(swap, "write_shard", write_and_corrupt)
    expected = f"differs from {src}" if target == "copied" else "differs from the tower's tensor"
    with pytest.raises(DcrError, match=f"verification failed: .* {re.escape(expected)}"):
        swap_tower(src, dcr_tower, tmp_path / "swapped")
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_changes_and_writes_nothing(make_llava_hf, dcr_tower, tmp_path, capsys):
    dst = tmp_path / "swapped"
    code, out, err = run(capsys, "--llava", make_llava_hf("hub"), "--tower", dcr_tower, "--output", dst, "--dry-run")
    assert code == 0, err
    assert "dry run" in out and f"would replace {CHECKPOINT_TOWER_TENSORS} vision-tower tensors" in out
    assert "image_mean" in out and " KB" in out
    assert list(tmp_path.iterdir()) == []


def _wide_tower(directory: Path) -> Path:
    config = CLIPVisionConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("case", ["wider tower", "missing SRC", "existing DST", "feature layer"])
def test_bad_input_fails_with_one_line_and_leaves_no_output(case, make_llava_hf, dcr_tower, tmp_path, capsys):
    src, tower = make_llava_hf("hub"), dcr_tower
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    dst = out_parent / "swapped"
    if case == "wider tower":
        tower, expected = _wide_tower(tmp_path / "wide"), "hidden size: checkpoint 32, tower 48"
    elif case == "missing SRC":
        src, expected = tmp_path / "no-such-checkpoint", "no such directory"
    elif case == "existing DST":
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")
        expected = "already exists; pass --force"
    else:
        src = shutil.copytree(src, tmp_path / "deep-feature")
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps(config | {"vision_feature_layer": -5}))
        expected = "feature layer -5 (vision_feature_layer) does not exist in the tower's 3 layers"

    code, out, err = run(capsys, "--llava", src, "--tower", tower, "--output", dst)

    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    if case == "existing DST":
        assert digest(dst) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    else:
        assert not dst.exists()
    assert leftovers(out_parent) == []


def test_siglip_into_clip_is_refused_unless_asked_for(make_llava_hf, tiny, tmp_path, capsys):
    src, dst = make_llava_hf("transformers5"), tmp_path / "siglip"
    code, _, err = run(capsys, "--llava", src, "--tower", tiny["siglip"], "--output", dst)
    assert code == 2 and "family: checkpoint clip" in err and "--allow-family-change" in err
    assert not dst.exists()

    code, out, err = run(capsys, "--llava", src, "--tower", tiny["siglip"], "--output", dst, "--allow-family-change")

    assert code == 0, err
    assert "warning:" in out and "must be retrained" in out
    config = json.loads((dst / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_feature_select_strategy"] == "full" and config["image_seq_length"] == 16
    processor = json.loads((dst / "processor_config.json").read_text())
    assert processor["num_additional_image_tokens"] == 0
    image_processor = processor[
        "image_processor"
    ]  # SigLIP's preprocessing (a plain resize, its mean/std), padded as LLaVA
    assert image_processor["image_processor_type"].startswith("LlavaImageProcessor") and image_processor["do_pad"]
    assert not image_processor["do_center_crop"] and image_processor["image_mean"] == [0.5, 0.5, 0.5]
    _, info = LlavaForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    assert torch.isfinite(answer(dst)).all()


def test_a_registered_family_swaps_in_with_no_other_change(make_llava_hf, toy_family, toy_dir, tmp_path, capsys):
    src, dst = make_llava_hf("hub"), tmp_path / "swapped"
    with registered(toy_family):  # LLaVA stores it as a CLIP vision model, so the checkpoint's family stays
        code, _, err = run(capsys, "--llava", src, "--tower", toy_dir, "--output", dst)
    assert code == 0, err
    assert json.loads((dst / "config.json").read_text())["vision_config"]["model_type"] == "clip_vision_model"
    with safe_open(toy_dir / "model.safetensors", "pt") as f:
        tower = {k: f.get_tensor(k) for k in f.keys()}
    new = tensors(dst)
    replaced = [key for key in new if tower_key(key) is not None]
    assert len(replaced) == CHECKPOINT_TOWER_TENSORS
    assert all(torch.equal(new[key], tower[tower_key(key)].to(new[key].dtype)) for key in replaced)


def test_open_clip_tower_is_refused(make_llava_hf, tiny, tmp_path, capsys):
    code, _, err = run(
        capsys, "--llava", make_llava_hf("hub"), "--tower", tiny["open_clip"], "--output", tmp_path / "x"
    )
    assert code == 2 and "open_clip tower" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_an_existing_output_only_when_done(make_llava_hf, dcr_tower, tmp_path, capsys):
    dst = tmp_path / "swapped"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    code, _, err = run(capsys, "--llava", make_llava_hf("prefixed"), "--tower", dcr_tower, "--output", dst, "--force")
    assert code == 0, err
    assert not (dst / "stale.txt").exists() and (dst / "model.safetensors.index.json").is_file()
    assert leftovers(tmp_path) == []


def test_original_checkpoint_gets_the_tower_beside_it(make_original, dcr_tower, tmp_path):
    src = make_original(stored_tower=True)
    before = digest(src)
    dst = tmp_path / "tiny-llava-dcr"

    report = swap_tower(src, dcr_tower, dst)

    assert digest(src) == before
    config, old_config = json.loads((dst / "config.json").read_text()), json.loads((src / "config.json").read_text())
    assert config["mm_vision_tower"] == str(dst.resolve() / "vision_tower")
    assert {k: v for k, v in config.items() if k != "mm_vision_tower"} == {
        k: v for k, v in old_config.items() if k != "mm_vision_tower"
    }
    copied = CLIPVisionModel.from_pretrained(dst / "vision_tower").state_dict()
    expected = CLIPVisionModel.from_pretrained(dcr_tower).state_dict()
    assert all(torch.equal(copied[k], expected[k]) for k in expected)
    assert list(CLIPImageProcessor.from_pretrained(dst / "vision_tower").image_mean) == ENHANCED_MEAN
    with safe_open(dcr_tower / "model.safetensors", "pt") as f:
        tower = {k: f.get_tensor(k) for k in f.keys()}
    old, new = tensors(src), tensors(dst)
    assert new.keys() == old.keys()
    stored = [k for k in old if tower_key(k)]
    assert len(stored) == CHECKPOINT_TOWER_TENSORS
    for key in old:
        if key in stored:
            assert torch.equal(new[key], tower[tower_key(key)].to(torch.float16)), key
        else:
            assert torch.equal(raw(new[key]), raw(old[key])), key
    text = "\n".join(report.lines())
    assert "contains 'llava'" in text and "absolute path" in text


def test_original_checkpoint_name_rule_is_spelled_out(make_original, dcr_tower, tmp_path):
    report = swap_tower(make_original(), dcr_tower, tmp_path / "swapped")
    text = "\n".join(report.lines())
    assert "replace 0 vision-tower tensors" in text
    assert "rename swapped (e.g. to swapped-llava)" in text


def test_pickled_original_checkpoint_is_copied_as_it_is_or_refused(make_original, dcr_tower, tmp_path, capsys):
    src = make_original(pickled=True)
    report = swap_tower(src, dcr_tower, tmp_path / "llava-swapped")
    for name in (
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ):
        assert (tmp_path / "llava-swapped" / name).read_bytes() == (src / name).read_bytes()
    assert "2 .bin file(s) byte-identical to SRC" in "\n".join(report.lines())

    code, _, err = run(
        capsys,
        "--llava",
        make_original(stored_tower=True, pickled=True),
        "--tower",
        dcr_tower,
        "--output",
        tmp_path / "no",
    )
    assert code == 2 and "stored in .bin pickles; pass --allow-pickle" in err and not (tmp_path / "no").exists()


def _as_bin_shards(src: Path, out: Path) -> Path:
    """A copy of a sharded safetensors llava-hf checkpoint re-saved as ``pytorch_model-*.bin`` shards
    with their index, as the released LLaVA-1.5 checkpoints are."""
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors", "model.safetensors.index.json"))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    names = {
        name: name.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")
        for name in set(index["weight_map"].values())
    }
    for name, bin_name in names.items():
        with safe_open(src / name, "pt") as f:
            torch.save({k: f.get_tensor(k) for k in f.keys()}, out / bin_name)
    index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return out


def _bin_tensors(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("pytorch_model*.bin")):
        found |= torch.load(path, map_location="cpu", weights_only=True)
    return found


@pytest.mark.parametrize("layout", ["llava-hf", "original"])
def test_bin_sharded_checkpoint_is_swapped_into_safetensors_shards(
    layout, make_llava_hf, make_original, dcr_tower, tmp_path, capsys
):
    src = (
        _as_bin_shards(make_llava_hf("hub"), tmp_path / "src")
        if layout == "llava-hf"
        else make_original(stored_tower=True, pickled=True)
    )
    before = digest(src)
    dst = tmp_path / "llava-swapped"

    code, _, err = run(
        capsys, "--llava", src, "--tower", dcr_tower, "--output", dst
    )  # without the flag: refused, naming it
    assert code == 2 and "--allow-pickle" in err and not dst.exists()
    code, out, _ = run(capsys, "--llava", src, "--tower", dcr_tower, "--output", dst, "--allow-pickle")

    assert (
        code == 0 and f"{len(list(src.glob('*.bin')))} .bin shard(s) of SRC read with the restricted unpickler" in out
    )
    assert digest(src) == before and leftovers(tmp_path) == []
    assert not list(dst.glob("*.bin")) and not (dst / "pytorch_model.bin.index.json").exists()
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    old, new = _bin_tensors(src), tensors(dst)
    assert set(index["weight_map"]) == set(new) == set(old)
    assert {name for name in index["weight_map"].values()} == {p.name for p in dst.glob("*.safetensors")}
    assert all(key in read_header(dst / name)[0] for key, name in index["weight_map"].items())
    with safe_open(dcr_tower / "model.safetensors", "pt") as f:
        tower = {k: f.get_tensor(k) for k in f.keys()}
    replaced = 0
    for key, value in old.items():
        expected = value
        if tower_key(key) in tower:
            expected, replaced = tower[tower_key(key)].to(value.dtype), replaced + 1
        assert new[key].dtype == value.dtype and torch.equal(raw(new[key]), raw(expected.contiguous())), key
    assert replaced == CHECKPOINT_TOWER_TENSORS
    if layout == "llava-hf":
        assert answer(dst).isfinite().all()


def test_swapped_processor_pads_as_training_does(make_llava_hf, dcr_tower, tmp_path):
    """A swapped llava-hf checkpoint evaluates on the pixels LLaVA-1.5 training sees: the tower's
    preprocessing after expand2square, from one LlavaImageProcessor (the one training uses)."""
    import numpy as np

    from dcr_mllm.llava.build import llava_image_processor

    dst = tmp_path / "swapped"
    swap_tower(make_llava_hf("hub", True), dcr_tower, dst)
    loaded = AutoProcessor.from_pretrained(dst).image_processor
    assert type(loaded).__name__.startswith("LlavaImageProcessor") and loaded.do_pad
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 80, 3), dtype=np.uint8))
    training = llava_image_processor(dcr_tower, do_pad=True)
    torch.testing.assert_close(
        loaded(wide, return_tensors="pt")["pixel_values"],
        training(wide, return_tensors="pt")["pixel_values"],
        atol=1e-6,
        rtol=0,
    )
    assert list(loaded.image_mean) == ENHANCED_MEAN


def test_an_unreadable_config_of_the_original_tower_is_an_error_not_a_guess(make_original, dcr_tower, tmp_path, capsys):
    """The tower an original checkpoint names is on this machine but its config is broken: the swap
    stops naming it (it used to guess the family from the name)."""
    src = tmp_path / "src-llava"
    shutil.copytree(make_original(), src)
    broken = tmp_path / "siglip-tower"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip", "vision_config": ')
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mm_vision_tower": str(broken)}))
    code, _, err = run(capsys, "--llava", src, "--tower", dcr_tower, "--output", tmp_path / "dst")
    assert (
        code == 2
        and f"the checkpoint's tower {broken}" in err
        and "not valid JSON" in err
        and not (tmp_path / "dst").exists()
    )
    with pytest.raises(DcrError) as raised:
        main(
            ["--debug", "swap-tower", "--llava", str(src), "--tower", str(dcr_tower), "--output", str(tmp_path / "dst")]
        )
    assert raised.value.__cause__ is not None
