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
    assert cli_command(2, None, ["enhance"])[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
    ]
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


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval-tower", "--towers", "base=missing/tower"], "missing/tower does not exist"),
        (["eval-tower", "--towers", "tiny-clip", "--world", "nowhere"], "not a world set"),
        (["eval-mllm", "--models", ""], "no model to score"),
        (["eval-mllm", "--bogus"], "unknown argument --bogus"),
        (["run-all", "--tiny", "--config-dir", "stages/configs/tiny"], "--tiny is a config directory"),
        (["run-all", "--tiny", "--seeds", "0"], "--seeds 0"),
        (["run-all", "--nproc", "two"], "invalid int value"),
        (["run-all", "--tasks", "dcr_suite"], "the world scores its own sets"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, words):
    done = step(*argv)
    assert done.returncode == 2 and words in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_a_config_the_pipeline_cannot_honour_stops_it_before_anything_runs(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "enhance.yaml").write_text(f"inherit: {REPO / 'stages/configs/tiny/enhance.yaml'}\nno_such_key: 1\n")
    (configs / "llava.yaml").write_text(f"inherit: {REPO / 'stages/configs/tiny/llava.yaml'}\n")
    done = step("run-all", "--config-dir", str(configs), cwd=tmp_path)
    assert done.returncode == 2 and "no_such_key" in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]  # nothing written


def test_a_real_tower_without_real_evaluation_data_is_refused_before_anything_runs(tmp_path):
    import os

    env = {**os.environ, "DCR_EVAL_DATA": str(tmp_path / "eval_data")}
    done = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.pipeline", "run-all", "--config-dir", "stages/configs/paper_clip_l14_224"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert all(flag in done.stderr for flag in ("--tower-eval-data", "--tasks", "--synthetic-eval")), done.stderr
    assert not (tmp_path / "eval_data").exists()


def test_real_evaluation_data_reaches_stages_4_and_5(tmp_path, monkeypatch):
    """``--synthetic-eval`` lets a real tower run on stand-ins; ``--tower-eval-data``, ``--probe-data``
    and ``--tasks`` reach the stage commands; a generated MMVP-VLM is no real data."""
    from dcr_mllm.evaluation.tower.synthetic import write_mmvp_vlm
    from dcr_mllm.pipeline.steps import eval_mllm_command, tower_benchmarks

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DCR_EVAL_DATA", str(tmp_path / "eval_data"))
    paper = "stages/configs/paper_clip_l14_224"
    assert plan(paper, synthetic_eval=True).tasks == "dcr_suite_local"
    mmvp = write_mmvp_vlm(tmp_path / "mmvp", image_size=8)
    with pytest.raises(DcrError, match="synthetic MMVP-VLM"):
        plan(paper, tasks="dcr_suite", tower_data=str(mmvp))
    (mmvp / "generated.json").unlink()  # as downloaded
    p = plan(paper, tasks="dcr_suite", tower_data=str(mmvp), probe_data=str(tmp_path))
    assert tower_benchmarks(tmp_path / "out", p.tower_data, p.probe_data, None) == {
        "mmvp-vlm": ["--data", str(mmvp)],
        "classification": ["--data", str(tmp_path)],
        "fine-grained": [],
    }
    command = eval_mllm_command("dcr=a base=b", p.tasks, 1, "out")
    assert command[command.index("--tasks") + 1] == "dcr_suite" and "--offline" not in command
    assert plan(tiny=True, tasks="mmvp_local").tasks == "mmvp_local"  # the tiny preset: synthetic by design


@pytest.mark.slow
def test_run_all_with_two_seeds_trains_and_scores_two_llavas_per_tower(tiny, tmp_path):
    """The plumbing of ``--seeds``, in miniature (the tiny preset, two steps a stage): four LLaVAs that
    differ only in their seed, each scored, each in the summary; the statistics are tested apart."""
    import json
    import os

    import yaml
    from safetensors.torch import load_file

    from dcr_mllm.config import read_config_file

    configs = tmp_path / "configs"
    configs.mkdir()
    enhance, llava = (read_config_file(REPO / "stages/configs/tiny" / f"{name}.yaml") for name in ("enhance", "llava"))
    enhance["data"] = {"synthetic_samples": 32, "synthetic_shards": 2}
    for stage in ("projector_stage", "lora_stage"):
        enhance[stage].update(max_steps=2, save_every=2, num_workers=0, micro_batch_size=4)
    llava.update(synthetic_images=16)
    llava["pretrain"].update(epochs=1)
    llava["finetune"].update(max_steps=2)
    for data in ("pretrain_data", "finetune_data"):
        llava[data].update(eval_share=0.25, eval_every=1)
    (configs / "enhance.yaml").write_text(yaml.safe_dump(enhance))
    (configs / "llava.yaml").write_text(yaml.safe_dump(llava))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.pipeline", "run-all", "--config-dir", str(configs), "--seeds", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = tmp_path / "outputs"
    runs = {"llava_tiny": 0, "llava_tiny_seed1": 1, "llava_tiny_base": 0, "llava_tiny_base_seed1": 1}
    for run, seed in runs.items():
        assert json.loads((outputs / run / "finetune" / "checkpoints" / "config.json").read_text())["seed"] == seed
        assert (outputs / run / "model" / "model.safetensors").is_file()
    projector = next(iter(load_file(outputs / "llava_tiny" / "pretrain" / "trainable.safetensors")))
    first, second = (
        load_file(outputs / run / "pretrain" / "trainable.safetensors")[projector]
        for run in ("llava_tiny", "llava_tiny_seed1")
    )
    assert not (first == second).all()  # another seed, another run
    report = json.loads((outputs / "eval_mllm" / "report" / "report.json").read_text())
    assert {"dcr", "base", "dcr_seed1", "base_seed1"} <= set(json.dumps(report).replace('"', " ").split())
    summary = (outputs / "summary.md").read_text()
    assert all(f"- {run.replace('llava_tiny', 'llava')}/finetune: 2 steps" in summary for run in runs)
    assert "stage-one run (seed 0" in summary
