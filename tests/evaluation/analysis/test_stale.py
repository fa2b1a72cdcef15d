"""The summary refuses a table scored on a tower or LLaVA whose files changed since."""

import shutil

from dcr_mllm.cli import main
from dcr_mllm.evaluation import freshness
from dcr_mllm.evaluation.analysis.stale import check_current


def test_a_tower_table_scored_before_the_tower_changed_is_refused(tiny, tmp_path, capsys):
    tower = shutil.copytree(tiny["clip"], tmp_path / "tower")
    report = tmp_path / "eval_tower" / "mmvp-vlm"  # what eval-tower records (evaluation/tower/run.py)
    freshness.mark_current(report, freshness.made_from({"towers": {"dcr": str(tower)}}, {"tower/dcr": tower}))
    model = shutil.copytree(tiny["clip"], tmp_path / "llava")  # a folder standing for the scored LLaVA
    args = f"pretrained={model},vision_tower={tower},device=cpu"
    record = freshness.made_from({"model_args": args}, {"model": model, "tower": tower})
    freshness.mark_current(tmp_path / "eval_mllm" / "dcr", record)
    check_current(tmp_path / "eval_tower", tmp_path / "eval_mllm")  # nothing changed: nothing refused
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    command = ["summary", "--tower-eval", str(tmp_path / "eval_tower"), "--mllm-eval", str(tmp_path / "eval_mllm")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"LLaVA table {tmp_path / 'eval_mllm' / 'dcr'}" in err and "eval-mllm" in err
    (tower / "config.json").write_text((tower / "config.json").read_text() + " ")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"tower table {report} was scored before tower dcr" in err and "eval-tower" in err
