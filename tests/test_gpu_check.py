"""The prepared GPU check (bench/gpu_check.sh) in its CPU smoke mode: the same code, tiny configs."""

import json
import math
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--steps", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    dcr = [row for row in result["rows"] if row["part"] == "dcr_step"]
    llava = [row for row in result["rows"] if row["part"] == "llava_lora_step"]
    assert {(r["image_size"], r["batch"], r["chunk"] > 0) for r in dcr} == {
        (s, b, c) for s in (224, 336) for b in (8, 16) for c in (False, True)
    }
    assert all(r["denoiser_calls"] == r["batch"] * (r["batch"] + 1) for r in dcr)
    assert len(llava) == 1 and llava[0]["zero_stage"] == 3
    for row in result["rows"]:
        assert row["tflops_per_step"] > 0 and math.isfinite(row["seconds_per_step"]) and row["images_per_second"] > 0
    # a B = 16 step evaluates the UNet 272 times against 72 at B = 8: the counted FLOPs must show it
    flops = {(r["batch"], r["chunk"] > 0): r["tflops_per_step"] for r in dcr if r["image_size"] == 224}
    assert flops[(16, False)] > 3 * flops[(8, False)]
