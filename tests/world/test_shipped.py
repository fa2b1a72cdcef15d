"""The world's base models as shipped in the package: installed when their recipe is the one asked
for, checked against their digests, equal to what a build writes, and compared with a rebuild."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dcr_mllm.components.build_once import is_built
from dcr_mllm.errors import DcrError
from dcr_mllm.world.models import MINI, WorldSpec, ensure_world
from dcr_mllm.world.rebuild import ship
from dcr_mllm.world.shipped import SHIPPED, compare, compare_lines, install, is_shipped, manifest

REPO = Path(__file__).resolve().parents[2]


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mini_shipped(tmp_path_factory):
    """MINI's two models trained here, and shipped (as the package's weights are) into a folder of their own."""
    root = tmp_path_factory.mktemp("mini_world")
    for name in ("clip", "sd"):
        ensure_world(name, root, MINI, train=True)
    source = tmp_path_factory.mktemp("mini_shipped")
    ship(root, MINI, source)
    return root, source


def test_the_package_ships_the_default_worlds_models_with_their_recipe():
    record = manifest()
    assert record["spec"] == json.loads(json.dumps(WorldSpec().recipe()))  # the recipe they were trained from
    for name in ("clip", "sd"):
        assert is_shipped(name, WorldSpec().fingerprint(name))
        assert not is_shipped(name, MINI.fingerprint(name))  # another recipe is trained, not installed
        weights = [f for f in record["models"][name]["files"] if f.endswith(".safetensors")]
        assert weights and all((SHIPPED / name / f).is_file() for f in weights)
        assert not any(
            "tokenizer" in f or f.endswith(("vocab.json", "merges.txt")) for f in record["models"][name]["files"]
        )
    assert record["built_with"]["cpu"] and record["built_with"]["torch"]


def test_shipped_models_install_as_the_build_wrote_them_with_tokenizers_generated(mini_shipped, tmp_path):
    root, source = mini_shipped
    for name in ("clip", "sd"):
        install(name, tmp_path / name, source)
        built, installed = files(root / name), files(tmp_path / name)
        assert installed.keys() == built.keys() - {".complete"}  # every file, the tokenizer's too
        weights = [f for f in built if f.endswith(".safetensors")]
        assert weights and all(installed[f] == built[f] for f in weights)  # bitwise
        assert all(installed[f] == built[f] for f in manifest(source)["models"][name]["files"])


def test_the_default_preset_installs_in_seconds_and_loads(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    target = ensure_world("clip", tmp_path)
    assert is_built(target, WorldSpec().fingerprint("clip"))
    shipped = load_file(SHIPPED / "clip" / "model.safetensors")
    model = CLIPModel.from_pretrained(target)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shipped.items() if k in model.state_dict())
    assert CLIPTokenizer.from_pretrained(target)("a red circle").input_ids[0] == 49406


def test_a_damaged_shipped_file_is_refused_in_one_line_and_nothing_is_installed(mini_shipped, tmp_path):
    _, source = mini_shipped
    damaged = tmp_path / "shipped"
    shutil.copytree(source, damaged)
    weights = damaged / "clip" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(DcrError, match=r"shipped world model clip is damaged .*model.safetensors.*--rebuild"):
        install("clip", tmp_path / "out", damaged)
    install("sd", tmp_path / "sd", damaged)  # the other model is intact


def test_compare_reports_bitwise_equality_and_the_largest_difference(mini_shipped, tmp_path):
    root, source = mini_shipped
    rows = compare(root, source)
    assert {r["model"] for r in rows} == {"clip", "sd"} and all(r["bitwise_equal"] == r["tensors"] for r in rows)
    assert all(line.endswith("bitwise identical") for line in compare_lines(rows))
    other = tmp_path / "other"
    shutil.copytree(root, other)
    state = load_file(other / "clip" / "model.safetensors")
    key = sorted(state)[0]
    state[key] = state[key] + 0.25
    save_file(state, other / "clip" / "model.safetensors")
    row = next(r for r in compare(other, source) if r["model"] == "clip")
    assert row["bitwise_equal"] == row["tensors"] - 1 and row["max_abs_diff"] == pytest.approx(0.25, rel=1e-3)


def test_build_world_rebuild_is_a_flag_of_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", "build-world", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "--rebuild" in out.stdout and "--rebuild-dir" in out.stdout
