"""Bad input, command by command: exit 2, one line on stderr, no traceback, nothing written.

Each case builds a broken input from the tiny preset and names the output path that must stay
absent (or unchanged). Cases already covered elsewhere (tests/test_config.py, tests/llava/checkpoints/test_swap.py,
tests/llava/checkpoints/test_convert.py, tests/evaluation/test_cli.py, ...) are not repeated here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dcr_mllm.cli import main


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weights(directory: Path) -> Path:
    return next(p for p in sorted(directory.rglob("*.safetensors")) if not p.name.startswith("."))


def tower_bad(kind: str):
    """A copy of the tiny CLIP tower broken one way."""

    def build(tiny, tmp: Path) -> Path:
        tower = copy(tiny["clip"], tmp / "tower")
        if kind == "truncated":
            truncate(weights(tower))
        elif kind == "header-cut":
            truncate(weights(tower), 20)
        elif kind == "tiny-file":
            truncate(weights(tower), 3)
        elif kind == "config-garbage":
            (tower / "config.json").write_text("{not json")
        elif kind == "config-latin1":
            (tower / "config.json").write_bytes(b'{"model_type": "clip\xe9"}')
        elif kind == "config-list":
            (tower / "config.json").write_text("[1, 2]")
        elif kind == "config-twice":
            (tower / "config.json").write_text(
                (tower / "config.json").read_text().rstrip()[:-1] + ', "model_type": "siglip"}'
            )
        elif kind == "pickle":
            weights(tower).unlink()
            torch.save({"x": torch.zeros(1)}, tower / "pytorch_model.bin")
        elif kind == "preprocessor-garbage":
            (tower / "preprocessor_config.json").write_text("}{")
        return tower

    return build


def sd_bad(kind: str):
    def build(tiny, tmp: Path) -> Path:
        sd = copy(tiny["sd"], tmp / "sd")
        if kind == "unet-truncated":
            truncate(weights(sd / "unet"))
        elif kind == "vae-truncated":
            truncate(weights(sd / "vae"))
        elif kind == "unet-config":
            (sd / "unet" / "config.json").write_text("nope")
        elif kind == "unet-pickle":
            weights(sd / "unet").unlink()
            torch.save({"x": torch.zeros(1)}, sd / "unet" / "diffusion_pytorch_model.bin")
        return sd

    return build


def enhance_args(tower_fn=None, sd_fn=None, extra=()):
    def args(tiny, tmp: Path) -> list[str]:
        tower = tower_fn(tiny, tmp) if tower_fn else tiny["clip"]
        sd = sd_fn(tiny, tmp) if sd_fn else tiny["sd"]
        return (
            ["enhance", f"tower={tower}", f"denoiser={sd}", f"output_dir={tmp / 'out'}", *extra(tmp)]
            if callable(extra)
            else ["enhance", f"tower={tower}", f"denoiser={sd}", f"output_dir={tmp / 'out'}", *extra]
        )

    return args


def llava_args(stage: str, tower_fn=None, lm_fn=None, extra=()):
    def args(tiny, tmp: Path) -> list[str]:
        tower = tower_fn(tiny, tmp) if tower_fn else tiny["clip"]
        lm = lm_fn(tiny, tmp) if lm_fn else tiny["llama"]
        more = extra(tmp) if callable(extra) else list(extra)
        return [f"llava-{stage}", f"tower={tower}", f"language_model={lm}", f"output_dir={tmp / 'out'}", *more]

    return args


def lm_bad(kind: str):
    def build(tiny, tmp: Path) -> Path:
        lm = copy(tiny["llama"], tmp / "lm")
        if kind == "truncated":
            truncate(weights(lm))
        elif kind == "tokenizer-garbage":
            (lm / "tokenizer_config.json").write_text("{")
        elif kind == "pickle":
            weights(lm).unlink()
            torch.save({"x": torch.zeros(1)}, lm / "pytorch_model.bin")
        return lm

    return build


def conversations(content: bytes):
    def extra(tmp: Path) -> list[str]:
        (tmp / "images").mkdir(exist_ok=True)
        (tmp / "conv.json").write_bytes(content)
        return [f"pretrain_data.json={tmp / 'conv.json'}", f"pretrain_data.image_folder={tmp / 'images'}"]

    return extra


def shard_bad(kind: str):
    """A shard folder whose one .tar is broken one way (the shard-count check comes later)."""

    def extra(tmp: Path) -> list[str]:
        import io
        import tarfile

        shards = tmp / "shards"
        shards.mkdir()
        if kind == "not-a-tar":
            (shards / "000.tar").write_bytes(b"<html>404 Not Found</html>" * 40)
            return [f"data.shards={shards}"]
        with tarfile.open(shards / "000.tar", "w") as tar:
            members = {
                "empty": {},
                "no-image": {"0001.txt": b"a caption"},
                "image-not-decodable": {"0001.jpg": b"not a jpeg", "0001.txt": b"a caption"},
            }[kind]
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return [f"data.shards={shards}"]

    return extra


def config_file(text: str, key: str = "--config"):
    """A config (or DeepSpeed JSON, with ``key`` the override naming it) written by the test."""

    def extra(tmp: Path) -> list[str]:
        path = tmp / ("ds.json" if key != "--config" else "c.yaml")
        path.write_text(text)
        return [key, str(path)] if key == "--config" else [f"{key}={path}"]

    return extra


def images_bad(kind: str):
    """A valid conversation file whose image folder lacks the images, or holds an undecodable one."""

    def extra(tmp: Path) -> list[str]:
        (tmp / "images").mkdir(exist_ok=True)
        records = [
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
            }
            for i in range(4)
        ]
        (tmp / "conv.json").write_text(json.dumps(records))
        if kind == "undecodable":
            (tmp / "images" / "0.png").write_bytes(b"not a png")
        return [f"pretrain_data.json={tmp / 'conv.json'}", f"pretrain_data.image_folder={tmp / 'images'}"]

    return extra


def empty_shards(tmp: Path) -> list[str]:
    (tmp / "shards").mkdir()
    return [f"data.shards={tmp / 'shards'}"]


def llava_hf_checkpoint(tmp: Path, broken: str = "") -> Path:
    """A minimal llava-hf checkpoint directory (config and one shard), enough to reach the tower checks."""
    src = tmp / "llava"
    src.mkdir()
    config = {
        "model_type": "llava",
        "vision_config": {"model_type": "clip_vision_model"},
        "text_config": {"model_type": "llama"},
    }
    (src / "config.json").write_text(json.dumps(config))
    save_file({"lm_head.weight": torch.zeros(4, 4)}, str(src / "model.safetensors"), {"format": "pt"})
    if broken == "truncated":
        truncate(src / "model.safetensors")
    elif broken == "config":
        (src / "config.json").write_bytes(b"\xff\xfe garbage")
    elif broken == "index":
        (src / "model.safetensors.index.json").write_text("{weight_map")
    elif broken == "config-twice":
        (src / "config.json").write_text(json.dumps(config)[:-1] + ', "model_type": "llava_next"}')
    return src


def swap_args(src_broken="", tower_fn=None, pickle_flag=False):
    def args(tiny, tmp: Path) -> list[str]:
        tower = tower_fn(tiny, tmp) if tower_fn else tiny["clip"]
        return [
            "swap-tower",
            "--llava",
            str(llava_hf_checkpoint(tmp, src_broken)),
            "--tower",
            str(tower),
            "--output",
            str(tmp / "out"),
            *(["--allow-pickle"] if pickle_flag else []),
        ]

    return args


def original_checkpoint(tmp: Path, tower: Path) -> Path:
    src = tmp / "orig"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"model_type": "llava_llama", "mm_vision_tower": str(tower), "mm_projector_type": "mlp2x_gelu"})
    )
    torch.save({"lm_head.weight": torch.zeros(2, 2)}, src / "pytorch_model.bin")
    return src


def convert_args(tower_fn=None):
    def args(tiny, tmp: Path) -> list[str]:
        tower = tower_fn(tiny, tmp) if tower_fn else tiny["clip"]
        return ["convert-llava", "--input", str(original_checkpoint(tmp, tower)), "--output", str(tmp / "out")]

    return args


def eval_args(tower_fn=None, benchmark="fine-grained", data=None, extra=()):
    def args(tiny, tmp: Path) -> list[str]:
        tower = tower_fn(tiny, tmp) if tower_fn else tiny["clip"]
        more = ["--data", str(data(tmp))] if data else []
        return [
            "eval-tower",
            "--tower",
            str(tower),
            "--benchmark",
            benchmark,
            "--output",
            str(tmp / "out"),
            *more,
            *extra,
        ]

    return args


def mmvp_vlm(header: str = "Question ID,Type,Statement", body: bytes = b""):
    def data(tmp: Path) -> Path:
        d = tmp / "mmvp-vlm"
        d.mkdir()
        (d / "Questions.csv").write_bytes(header.encode() + b"\n" + (body or b"1,Orientation,a cat\n"))
        return d

    return data


def prepare_args(mmvp=None, pope=None, synthetic=False):
    def args(tiny, tmp: Path) -> list[str]:
        out = ["prepare-eval-data", "--output", str(tmp / "out")]
        if synthetic:
            out.append("--synthetic")
        if mmvp:
            out += ["--mmvp", str(mmvp(tmp))]
        if pope:
            out += ["--pope", str(pope(tmp)), "--coco", str(tmp / "coco")]
        return out

    return args


def mmvp_dir(csv_bytes: bytes):
    def build(tmp: Path) -> Path:
        from PIL import Image

        d = tmp / "MMVP"
        (d / "MMVP Images").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "MMVP Images" / "1.jpg")
        (d / "Questions.csv").write_bytes(csv_bytes)
        return d

    return build


def pope_dir(bad_split: str, line: bytes):
    def build(tmp: Path) -> Path:
        from PIL import Image

        (tmp / "coco").mkdir()
        Image.new("RGB", (8, 8)).save(tmp / "coco" / "a.jpg")
        d = tmp / "POPE"
        d.mkdir()
        good = b'{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}\n'
        for split in ("adversarial", "popular", "random"):
            (d / f"coco_pope_{split}.json").write_bytes(line if split == bad_split else good)
        return d

    return build


def results_file(content: bytes):
    def args(tiny, tmp: Path) -> list[str]:
        (tmp / "r_results.json").write_bytes(content)
        return ["report", str(tmp / "r_results.json"), "--output", str(tmp / "out")]

    return args


def summary_empty_run(tiny, tmp: Path) -> list[str]:
    """``summary`` with a second run whose folder exists but holds nothing."""
    (tmp / "empty").mkdir()
    return [*summary_args({"run/projector/train_state.json": b'{"step": 2}'})(tiny, tmp), "--run", f"b={tmp / 'empty'}"]


def summary_args(files: dict[str, bytes], extra=()):
    def args(tiny, tmp: Path) -> list[str]:
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(content)
        return [
            "summary",
            "--run",
            f"a={tmp / 'run'}",
            "--tower-eval",
            str(tmp / "tower_eval"),
            "--mllm-eval",
            str(tmp / "mllm_eval"),
            "--output",
            str(tmp / "out"),
            *extra,
        ]

    return args


CASES = {
    # stage one: weights and configs of the tower and the denoiser, data
    "enhance/tower-safetensors-truncated": (enhance_args(tower_bad("truncated")), "not a complete safetensors file"),
    "enhance/tower-header-cut": (enhance_args(tower_bad("header-cut")), "not a complete safetensors file"),
    "enhance/tower-3-byte-file": (enhance_args(tower_bad("tiny-file")), "not a complete safetensors file"),
    "enhance/tower-config-not-json": (enhance_args(tower_bad("config-garbage")), "is not valid JSON"),
    "enhance/tower-config-not-utf8": (enhance_args(tower_bad("config-latin1")), "is not UTF-8"),
    "enhance/tower-config-a-list": (enhance_args(tower_bad("config-list")), "incomplete tower config"),
    "enhance/tower-preprocessor-not-json": (enhance_args(tower_bad("preprocessor-garbage")), "is not valid JSON"),
    "enhance/tower-only-pickle": (enhance_args(tower_bad("pickle")), "--allow-pickle"),
    "enhance/unet-truncated": (enhance_args(sd_fn=sd_bad("unet-truncated")), "not a complete safetensors file"),
    "enhance/vae-truncated": (enhance_args(sd_fn=sd_bad("vae-truncated")), "not a complete safetensors file"),
    "enhance/unet-config-not-json": (enhance_args(sd_fn=sd_bad("unet-config")), "is not valid JSON"),
    "enhance/unet-only-pickle": (enhance_args(sd_fn=sd_bad("unet-pickle")), "safetensors"),
    "enhance/shards-folder-empty": (enhance_args(extra=empty_shards), "no .tar shards"),
    "enhance/shards-missing": (
        enhance_args(extra=lambda tmp: [f"data.shards={tmp / 'none_{0..3}.tar'}"]),
        "does not exist",
    ),
    "enhance/shard-not-a-tar": (enhance_args(extra=shard_bad("not-a-tar")), "is not a readable tar archive"),
    "enhance/shard-without-samples": (enhance_args(extra=shard_bad("empty")), "holds no samples"),
    "enhance/shard-first-sample-without-image": (enhance_args(extra=shard_bad("no-image")), "has no image"),
    "enhance/shard-first-image-undecodable": (
        enhance_args(extra=shard_bad("image-not-decodable")),
        "cannot decode image",
    ),
    "enhance/eval-benchmark-folder-without-labels": (
        enhance_args(
            extra=lambda tmp: (
                (tmp / "val").mkdir() or ["eval.every=1", f"eval.benchmarks=[{{name: world, data: {tmp / 'val'}}}]"]
            )
        ),
        "no labels.csv",
    ),
    "enhance/config-section-written-twice": (
        enhance_args(extra=config_file("seed: 0\nprojector_stage:\n  lr: 0.01\nprojector_stage:\n  max_steps: 2\n")),
        "key 'projector_stage' is written twice (lines 2 and 4)",
    ),
    "enhance/deepspeed-json-key-twice": (
        enhance_args(
            extra=config_file(
                '{"zero_optimization": {"stage": 2},\n "zero_optimization": {"stage": 3}}', "projector_stage.deepspeed"
            )
        ),
        "key 'zero_optimization' is written twice (lines 1 and 2)",
    ),
    "enhance/override-key-twice": (
        enhance_args(extra=["objective={name: dcr, name: naive}"]),
        "key 'name' is written twice",
    ),
    # stage two: tower, language model, conversation data
    "llava-pretrain/tower-truncated": (
        llava_args("pretrain", tower_bad("truncated")),
        "not a complete safetensors file",
    ),
    "llava-pretrain/lm-truncated": (
        llava_args("pretrain", lm_fn=lm_bad("truncated")),
        "not a complete safetensors file",
    ),
    "llava-pretrain/lm-tokenizer-not-json": (
        llava_args("pretrain", lm_fn=lm_bad("tokenizer-garbage")),
        "is not valid JSON",
    ),
    "llava-pretrain/lm-only-pickle": (llava_args("pretrain", lm_fn=lm_bad("pickle")), "--allow-pickle"),
    "llava-pretrain/json-not-utf8": (
        llava_args("pretrain", extra=conversations(b'[{"image": "\xff"}]')),
        "is not UTF-8",
    ),
    "llava-pretrain/json-cut-short": (
        llava_args("pretrain", extra=conversations(b'[{"image": "a.png", ')),
        "is not valid JSON",
    ),
    "llava-pretrain/json-key-twice": (
        llava_args("pretrain", extra=conversations(b'[{"id": "1",\n "conversations": [], "id": "2"}]')),
        "key 'id' is written twice (lines 1 and 2)",
    ),
    "llava-pretrain/every-image-missing": (llava_args("pretrain", extra=images_bad("missing")), "0.png"),
    "llava-pretrain/first-image-undecodable": (
        llava_args("pretrain", extra=images_bad("undecodable")),
        "cannot decode image",
    ),
    "llava-pretrain/config-key-twice": (
        llava_args("pretrain", extra=config_file("seed: 1\nseed: 2\n")),
        "key 'seed' is written twice",
    ),
    "llava-finetune/tower-config-not-json": (llava_args("finetune", tower_bad("config-garbage")), "is not valid JSON"),
    "llava-finetune/lm-truncated": (
        llava_args("finetune", lm_fn=lm_bad("truncated")),
        "not a complete safetensors file",
    ),
    # swap-tower and convert-llava
    "swap-tower/checkpoint-truncated": (swap_args("truncated"), "not a complete safetensors file"),
    "swap-tower/checkpoint-config-not-utf8": (swap_args("config"), "is not UTF-8"),
    "swap-tower/checkpoint-index-not-json": (swap_args("index"), "is not valid JSON"),
    "swap-tower/checkpoint-config-key-twice": (swap_args("config-twice"), "key 'model_type' is written twice"),
    "swap-tower/tower-config-key-twice": (
        swap_args(tower_fn=tower_bad("config-twice")),
        "key 'model_type' is written twice",
    ),
    "swap-tower/tower-truncated": (swap_args(tower_fn=tower_bad("truncated")), "not a complete safetensors file"),
    "swap-tower/tower-config-not-json": (swap_args(tower_fn=tower_bad("config-garbage")), "is not valid JSON"),
    "swap-tower/tower-only-pickle": (
        swap_args(tower_fn=tower_bad("pickle"), pickle_flag=True),
        "convert them to safetensors",
    ),
    "convert-llava/pickled-weights-without-flag": (convert_args(), "--allow-pickle"),
    "convert-llava/tower-truncated": (convert_args(tower_bad("truncated")), "not a complete safetensors file"),
    # eval-tower
    "eval-tower/tower-truncated": (eval_args(tower_bad("truncated")), "not a complete safetensors file"),
    "eval-tower/tower-only-pickle": (eval_args(tower_bad("pickle")), "--allow-pickle"),
    "eval-tower/mmvp-vlm-wrong-header": (
        eval_args(benchmark="mmvp-vlm", data=mmvp_vlm("id,kind,text")),
        "Question ID,Type,Statement",
    ),
    "eval-tower/mmvp-vlm-not-utf8": (
        eval_args(benchmark="mmvp-vlm", data=mmvp_vlm(body=b"1,Orientation,caf\xe9\n")),
        "is not UTF-8",
    ),
    # make-eval-data
    "make-eval-data/output-exists": (
        lambda tiny, tmp: (tmp / "out").mkdir() or ["make-eval-data", "mmvp-vlm", "--output", str(tmp / "out")],
        "exists",
    ),
    # prepare-eval-data
    "prepare-eval-data/mmvp-not-utf8": (
        prepare_args(mmvp=mmvp_dir(b"Index,Question,Options,Correct Answer\n1,Caf\xe9?,(a) x (b) y,(a)\n")),
        "is not UTF-8",
    ),
    "prepare-eval-data/mmvp-image-missing": (
        prepare_args(mmvp=mmvp_dir(b"Index,Question,Options,Correct Answer\n2,Q?,(a) x (b) y,(a)\n")),
        "is missing",
    ),
    "prepare-eval-data/pope-image-not-a-string": (
        prepare_args(pope=pope_dir("random", b'{"question_id": 1, "image": 7, "text": "Q?", "label": "no"}\n')),
        "malformed",
    ),
    "prepare-eval-data/pope-not-utf8": (
        prepare_args(pope=pope_dir("random", b'{"question_id": 1, "image": "\xff", "text": "Q?", "label": "no"}\n')),
        "is not UTF-8",
    ),
    "prepare-eval-data/synthetic-then-bad-pope": (
        prepare_args(pope=pope_dir("popular", b"{oops}\n"), synthetic=True),
        "line 1 is not valid JSON",
    ),
    "prepare-eval-data/pope-line-key-twice": (
        prepare_args(
            pope=pope_dir(
                "adversarial", b'{"question_id": 1, "image": "a.jpg", "text": "Q?", "label": "no", "label": "yes"}\n'
            )
        ),
        "line 1: key 'label' is written twice",
    ),
    # report
    "report/not-json": (results_file(b'{"results": '), "is not valid JSON"),
    "report/results-not-a-table": (results_file(b'{"results": [1, 2]}'), "not an lmms-eval results file"),
    "report/task-not-a-table": (results_file(b'{"results": {"mmvp": 3}}'), "not an lmms-eval results file"),
    "report/not-utf8": (results_file(b'{"results": {"\xff": {}}}'), "is not UTF-8"),
    "report/task-written-twice": (
        results_file(b'{"results": {"mmvp": {"acc": 1},\n "mmvp": {"acc": 0}}}'),
        "key 'mmvp' is written twice",
    ),
    # summary
    "summary/run-without-name": (summary_args({}, extra=["--run", "outputs/enhance"]), "NAME=DIR"),
    "summary/run-missing": (summary_args({}), "/run: no such folder; give a training run's output directory"),
    "summary/run-empty": (summary_empty_run, "/empty: the folder is empty; give a training run's output directory"),
    "summary/train-state-not-json": (summary_args({"run/projector/train_state.json": b"{"}), "is not valid JSON"),
    "summary/train-state-without-step": (summary_args({"run/projector/train_state.json": b"{}"}), "no step count"),
    "summary/metrics-key-twice": (
        summary_args(
            {
                "run/projector/train_state.json": b'{"step": 2}',
                "run/projector/metrics.jsonl": b'{"step": 1, "loss": 1.0, "loss": 2.0}\n',
            }
        ),
        "key 'loss' is written twice",
    ),
    "summary/train-state-key-twice": (
        summary_args({"run/projector/train_state.json": b'{"step": 2,\n"step": 3}'}),
        "key 'step' is written twice",
    ),
    "summary/metrics-cut-short": (
        summary_args(
            {
                "run/projector/train_state.json": b'{"step": 2}',
                "run/projector/metrics.jsonl": b'{"step": 1, "loss": 1.0}\n{"step": 2, "lo',
            }
        ),
        "line 2",
    ),
    "summary/tower-results-not-json": (summary_args({"tower_eval/mmvp-vlm/results.json": b"[1,"}), "is not valid JSON"),
    "summary/mllm-report-not-utf8": (summary_args({"mllm_eval/report/report.md": b"\xff\xfe"}), "is not UTF-8"),
    "summary/world-results-without-metrics": (
        summary_args({"tower_eval/world/results.json": b'{"base": {"class/probe": 1}}'}),
        "lacks world metrics",
    ),
    "summary/world-comparison-not-a-comparison": (
        summary_args({"mllm_eval/report/world_significance.json": b"[1]"}),
        "is not a world comparison",
    ),
    "summary/world-comparison-bad-tower-effects": (
        summary_args({"mllm_eval/report/world_significance.json": b'{"towers": {"a vs b": 1}}'}),
        "holds no tower comparison over seeds",
    ),
    # build-world
    "build-world/output-is-a-file": (
        lambda tiny, tmp: (tmp / "f").write_text("x") and ["build-world", "--output", str(tmp / "f")],
        "is a file",
    ),
}


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_and_writes_nothing(case, tiny, tmp_path, capsys, monkeypatch):
    build, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    argv = build(tiny, work)
    monkeypatch.delenv("DCR_MLLM_DEBUG", raising=False)
    before = snapshot(work)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and message in lines[0], lines[0]
    assert not (work / "out").exists() or case == "make-eval-data/output-exists"
    assert snapshot(work) == before  # nothing written anywhere beside the inputs, no temporaries either


def test_pickled_tower_loads_only_with_allow_pickle(tiny, tmp_path, capsys):
    """The same .bin-only tower is refused without the flag and scored with it (restricted unpickler)."""
    from transformers import CLIPModel

    tower = copy(tiny["clip"], tmp_path / "tower")
    model = CLIPModel.from_pretrained(tower)
    weights(tower).unlink()
    torch.save(model.state_dict(), tower / "pytorch_model.bin")
    argv = [
        "eval-tower",
        "--tower",
        str(tower),
        "--benchmark",
        "fine-grained",
        "--pairs-per-attribute",
        "1",
        "--image-size",
        "32",
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2 and "weights_only=True" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 0
    assert (tmp_path / "out" / "results.json").is_file()


def test_killed_writer_leaves_staging_that_the_next_run_removes(tmp_path):
    """A SIGKILLed atomic_dir leaves .DST.<pid>@<host>.*.partial; the next write to DST removes it."""
    from dcr_mllm.io import atomic_dir

    code = (
        "import sys, time; from dcr_mllm.io import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'big').write_bytes(b'x' * 1000); print(tmp, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "dst")], stdout=subprocess.PIPE, text=True)
    staging = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging.is_dir() and staging.name.startswith(f".dst.{proc.pid}@")
    with atomic_dir(tmp_path / "dst") as tmp:
        (tmp / "ok").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
