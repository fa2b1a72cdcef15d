"""A full disk, a read-only file system and a forbidden folder, met for real while training, exporting
and writing data: one line naming the path and the cause, exit 2, the last good checkpoint kept and
nothing partial; once the fault is gone, the same command resumes to the weights of an uninterrupted run.

The small file system is a tmpfs mounted inside a user and mount namespace (``unshare``), so the
test needs no privileges beyond what the kernel grants every user; where it cannot make one, it
says so and is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "dcr_mllm.cli"]
# one projector step, then LoRA steps saved every step: small, and every kind of write happens
RUN = [
    "enhance",
    "stages=[projector,lora]",
    "projector_stage.max_steps=1",
    "projector_stage.save_every=1",
    "lora_stage.save_every=1",
    "data.synthetic_samples=8",
    "data.synthetic_shards=2",
    "projector_stage.micro_batch_size=2",
    "lora_stage.micro_batch_size=2",
    "projector_stage.num_workers=0",
    "lora_stage.num_workers=0",
]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="this kernel lets no user mount a tmpfs (unshare)")


def _phases(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _error_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("error:") or "Traceback" in line]


def _leftovers(root: Path) -> list[str]:
    """Temporaries and partial checkpoints: what a failed write must not leave."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".partial")
    )


@needs_namespaces
def test_full_disk_during_a_checkpoint_then_resume_and_read_only_export(tiny, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    mnt, logs = tmp_path / "mnt", tmp_path / "logs"
    mnt.mkdir()
    logs.mkdir()
    run = " ".join(CLI + RUN + [f"tower={tiny['clip']}", f"denoiser={tiny['sd']}", f"output_dir={mnt}/out"])
    script = f"""
set -u
mount -t tmpfs -o size=64m tmpfs {mnt}
{run} lora_stage.max_steps=1 > {logs}/first.log 2>&1; echo $? > {logs}/first.rc
# the disk fills: room left for less than one checkpoint, and LoRA is asked for two more steps
used=$(df --output=used -B1 {mnt} | tail -1)
mount -o remount,size=$((used + 8192)) {mnt}
{run} lora_stage.max_steps=3 > {logs}/full.log 2>&1; echo $? > {logs}/full.rc
ls -aR {mnt}/out > {logs}/full.listing; cat {mnt}/out/lora/checkpoints/latest > {logs}/full.latest
mount -o remount,size=64m {mnt}
{run} lora_stage.max_steps=3 > {logs}/resumed.log 2>&1; echo $? > {logs}/resumed.rc
cp {mnt}/out/lora/trainable.safetensors {logs}/resumed.safetensors
# a read-only file system: an export and a data write
mount -o remount,ro {mnt}
{" ".join(CLI)} export-tower {mnt}/out --step 2 > {logs}/export.log 2>&1; echo $? > {logs}/export.rc
{" ".join(CLI)} make-eval-data mmvp-vlm --output {mnt}/mmvp > {logs}/data_ro.log 2>&1; echo $? > {logs}/data_ro.rc
# a full disk while data is written
mount -o remount,rw {mnt}
used=$(df --output=used -B1 {mnt} | tail -1)
mount -o remount,size=$((used + 4096)) {mnt}
{" ".join(CLI)} make-eval-data mmvp-vlm --output {mnt}/mmvp > {logs}/data_full.log 2>&1; echo $? > {logs}/data_full.rc
ls -aR {mnt} > {logs}/end.listing
"""
    reference = subprocess.run(
        [
            *CLI,
            *RUN,
            f"tower={tiny['clip']}",
            f"denoiser={tiny['sd']}",
            f"output_dir={tmp_path / 'ref'}",
            "lora_stage.max_steps=3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    done = _phases(script, env)
    assert done.returncode == 0, done.stderr[-2000:]
    rc = {
        name: int((logs / f"{name}.rc").read_text())
        for name in ("first", "full", "resumed", "export", "data_ro", "data_full")
    }
    assert rc["first"] == 0, (logs / "first.log").read_text()[-2000:]

    # full disk at the LoRA checkpoint of step 2: one line, exit 2, step 1 kept, nothing partial
    assert rc["full"] == 2, (logs / "full.log").read_text()[-3000:]
    (line,) = _error_lines(logs / "full.log")
    assert f"{mnt}/out/lora/checkpoints" in line and "no space left on device (ENOSPC)" in line, line
    assert (logs / "full.latest").read_text().strip() == "step_000001"
    listing = (logs / "full.listing").read_text()
    assert (
        "step_000001" in listing
        and "step_000002" not in listing
        and ".tmp" not in listing
        and ".partial" not in listing
    )

    # the same command once there is room: resumes from step 1 and ends with an uninterrupted run's weights
    assert rc["resumed"] == 0, (logs / "resumed.log").read_text()[-2000:]
    assert "resumed from" in (logs / "resumed.log").read_text() and "step_000001" in (logs / "resumed.log").read_text()
    assert (logs / "resumed.safetensors").read_bytes() == (
        tmp_path / "ref" / "lora" / "trainable.safetensors"
    ).read_bytes()

    # read-only: the export and the data write are one line each and leave nothing
    for name, _path in (("export", f"{mnt}/out/tower_step_2"), ("data_ro", f"{mnt}/mmvp")):
        assert rc[name] == 2, (logs / f"{name}.log").read_text()[-2000:]
        (line,) = _error_lines(logs / f"{name}.log")
        assert "read-only file system (EROFS)" in line and str(mnt) in line, line
    # a full disk while generating data: one line, the folder never appears, no temporaries
    assert rc["data_full"] == 2, (logs / "data_full.log").read_text()[-2000:]
    (line,) = _error_lines(logs / "data_full.log")
    assert f"cannot write {mnt}/mmvp" in line and "(ENOSPC)" in line, line
    end = (logs / "end.listing").read_text()
    assert "tower_step_2" not in end and "mmvp" not in end and ".partial" not in end and ".tmp" not in end


@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "true"]).returncode != 0,
    reason="this kernel lets no user create a user namespace (unshare)",
)
def test_a_folder_the_user_may_not_write_is_one_line(tmp_path):
    """EACCES: a folder nobody may write to (mode 555), written to from a user namespace, where even
    root holds no capability over the host's files."""
    home = Path(tempfile.mkdtemp(prefix="dcr-home-"))
    home.chmod(0o777)
    forbidden = Path(tempfile.mkdtemp(prefix="dcr-forbidden-"))
    forbidden.chmod(0o555)
    try:
        env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "DCR_MLLM_CACHE": str(home)}
        done = subprocess.run(
            ["unshare", "--user", *CLI, "make-eval-data", "mmvp-vlm", "--output", str(forbidden / "mmvp")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
        assert len(lines) == 1 and "permission denied (EACCES)" in lines[0] and str(forbidden) in lines[0], done.stderr[
            -2000:
        ]
        assert list(forbidden.iterdir()) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(forbidden, ignore_errors=True)
