"""dcr_mllm.io: a destination is either the old one or the complete new one, never half of either,
and no temporary is left behind; the report writers go through it."""

import json

import pytest

from dcr_mllm.evaluation.analysis.summary import plot_loss
from dcr_mllm.evaluation.mllm.report import compare_runs
from dcr_mllm.io import atomic_dir, atomic_path, write_atomic


def test_write_atomic_replaces_a_file_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "sub" / "results.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == target.parent
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_atomic_dir_replaces_a_directory_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("verification failed")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_reports_and_loss_curves_leave_only_their_files(tmp_path):
    runs = []
    for name, accuracy in (("base", 0.5), ("dcr", 0.75)):
        run = tmp_path / name
        run.mkdir()
        (run / "x_results.json").write_text(json.dumps({"results": {"mmvp_local": {"mmvp_accuracy,none": accuracy}}}))
        runs.append(f"{name}={run}")
    table = compare_runs(runs, tmp_path / "report")
    assert table == {"base": {"mmvp_local/mmvp_accuracy": 0.5}, "dcr": {"mmvp_local/mmvp_accuracy": 0.75}}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.json", "report.md", "report.png"]
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    assert plot_loss(stage) == stage / "loss.png"
    assert sorted(p.name for p in stage.iterdir()) == ["loss.png", "metrics.jsonl"]
    assert (stage / "loss.png").read_bytes()[:4] == b"\x89PNG"
