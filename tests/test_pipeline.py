"""The stage scripts' steps (``dcr_mllm.pipeline``): how they launch, and that bad input stops them
in one line before anything runs. The whole pipeline runs in the README's `--tiny` command."""

import subprocess
import sys
from pathlib import Path

import pytest

from dcr_mllm.errors import DcrError
from dcr_mllm.pipeline.launch import cli_command
from dcr_mllm.pipeline.run_all import plan

REPO = Path(__file__).resolve().parents[1]


def step(*argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dcr_mllm.pipeline", *argv], capture_output=True, text=True, cwd=cwd)


def test_one_process_torchrun_or_the_deepspeed_launcher(tmp_path):
    assert cli_command(1, None, ["enhance"]) == [sys.executable, "-m", "dcr_mllm.cli", "enhance"]
    assert cli_command(2, None, ["enhance"])[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1 slots=8\n")
    launched = cli_command(8, str(hosts), ["enhance"])
    assert Path(launched[0]).name == "deepspeed" and launched[1:5] == ["--hostfile", str(hosts), "--num_gpus", "8"]
    with pytest.raises(DcrError, match="hostfile"):
        cli_command(8, str(tmp_path / "missing.txt"), ["enhance"])


def test_every_stage_script_is_a_thin_wrapper_over_a_step():
    for script in sorted((REPO / "stages").glob("*.sh")):
        if script.name != "common.sh":
            lines = script.read_text().splitlines()
            assert len(lines) <= 8 and lines[-1].startswith("run_step "), script.name


def test_the_plan_reads_the_configs_with_their_defaults(monkeypatch):
    monkeypatch.chdir(REPO)
    tiny = plan(tiny=True)
    assert not tiny.world and tiny.enhance_out == "outputs/enhance_tiny" and tiny.base_tower == "tiny-clip"
    world = plan()
    assert world.world and world.world_task == "world_local_open" and world.llava_config.endswith("world/llava.yaml")


@pytest.mark.parametrize("argv, words", [
    (["eval-tower", "--towers", "base=missing/tower"], "missing/tower does not exist"),
    (["eval-tower", "--towers", "tiny-clip", "--world", "nowhere"], "not a world set"),
    (["eval-mllm", "--models", ""], "no model to score"),
    (["eval-mllm", "--bogus"], "unknown argument --bogus"),
    (["run-all", "--tiny", "--config-dir", "stages/configs/tiny"], "--tiny is a config directory"),
    (["run-all", "--nproc", "two"], "invalid int value"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words):
    done = step(*argv)
    assert done.returncode == 2 and words in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_a_config_the_pipeline_cannot_honour_stops_it_before_anything_runs(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "enhance.yaml").write_text((REPO / "stages/configs/tiny/enhance.yaml").read_text() + "no_such_key: 1\n")
    (configs / "llava.yaml").write_text((REPO / "stages/configs/tiny/llava.yaml").read_text())
    done = step("run-all", "--config-dir", str(configs), cwd=tmp_path)
    assert done.returncode == 2 and "no_such_key" in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]  # nothing written
