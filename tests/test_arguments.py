"""The base every command line shares (``dcr_mllm.arguments``): ``dcr-mllm``, the stage scripts'
pipeline and the ablation read their config arguments and report a user error the same way."""

import argparse
import subprocess
import sys

import pytest

from dcr_mllm import arguments
from dcr_mllm.errors import DcrError


def fail(err: Exception):
    def run():
        raise err

    return run


def test_a_user_error_is_one_line_and_exit_2_and_any_other_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv("DCR_MLLM_DEBUG", raising=False)
    assert arguments.run_reporting(lambda: None) == 0
    assert arguments.run_reporting(fail(DcrError("bad value; fix it"))) == 2
    assert capsys.readouterr().err == "error: bad value; fix it\n"
    with pytest.raises(ZeroDivisionError):
        arguments.run_reporting(fail(ZeroDivisionError()))
    with pytest.raises(DcrError):
        arguments.run_reporting(fail(DcrError("x")), debug=True)
    monkeypatch.setenv("DCR_MLLM_DEBUG", "1")
    with pytest.raises(DcrError):
        arguments.run_reporting(fail(DcrError("x")))


def test_overrides_and_options_mix_in_any_order():
    parser = argparse.ArgumentParser()
    arguments.add_config(parser, "the config")
    parser.add_argument("--seeds", type=int, default=1)
    arguments.add_overrides(parser, "overrides")
    args = arguments.parse_intermixed(parser, ["a=1", "--seeds", "2", "b=2", "--config", "c.yaml", "c=3"])
    assert (args.overrides, args.seeds, args.config) == (["a=1", "b=2", "c=3"], 2, "c.yaml")
    with pytest.raises(SystemExit):
        arguments.parse_intermixed(parser, ["a=1", "--bogus"])


def test_the_pipeline_and_the_ablation_use_the_base(tmp_path):
    from dcr_mllm.pipeline import __main__ as pipeline

    assert pipeline.OneLineParser is arguments.OneLineParser
    done = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.enhance.ablation", "seed=1", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "missing.yaml does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--lrs", "0,1e-3"], "learning rates positive"),
        (["--lrs", "3e-4;1e-3"], "give comma-separated values, e.g. 3e-4,1e-3 (see budget.py --help)"),
        (["--seeds", "three"], "invalid int value: 'three'"),
        (["eval.every=0"], "the budget curve chooses each step on validation: set eval.every"),
        (["lora_stage.scheduler=cosine"], "needs a LoRA rate that does not depend on max_steps"),
    ],
)
def test_the_budget_curve_refuses_what_it_cannot_run_before_writing_a_byte(tmp_path, argv, line):
    done = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.enhance.budget", "--output", str(tmp_path / "out"), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and line in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
