"""``dcr-mllm eval-tower`` and ``make-eval-data``: the report files, and one-line errors for bad input."""

import csv
import json

import pytest
from PIL import Image

from dcr_mllm.cli import main
from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES
from dcr_mllm.evaluation.tower import CATEGORIES, read_benchmark


def test_two_towers_on_mmvp_vlm_write_json_csv_table_and_chart(tiny, mmvp_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "eval-tower",
            "--tower",
            f"base={tiny['clip']}",
            "--tower",
            str(tiny["open_clip"]),
            "--benchmark",
            "mmvp-vlm",
            "--data",
            str(mmvp_dir),
            "--output",
            str(out),
            "--batch-size",
            "50",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["base", str(tiny["open_clip"])]
    for scores in results.values():
        assert list(scores) == [*CATEGORIES, "average"] and all(0 <= v <= 100 for v in scores.values())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "tower",
        "category",
        "qid1",
        "qid2",
        "pred1",
        "pred2",
        "gt1",
        "gt2",
        "img1_score1",
        "img1_score2",
    ]
    assert [r["tower"] for r in rows] == ["base"] * 135 + [str(tiny["open_clip"])] * 135
    table = (out / "results.md").read_text()
    assert f"| metric (%) | base | {tiny['open_clip']} |" in table and table.count("\n| ") == 11
    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width > chart.height
    assert "| average |" in capsys.readouterr().out
    assert not list(out.glob("*.tmp"))


def test_probes_have_the_same_report_shape(tiny, tmp_path):
    data = tmp_path / "shapes"
    assert (
        main(["make-eval-data", "classification", "--output", str(data), "--per-class", "3", "--image-size", "32"]) == 0
    )
    assert (
        main(
            [
                "eval-tower",
                "--tower",
                "tiny-clip",
                "--benchmark",
                "classification",
                "--data",
                str(data),
                "--output",
                str(tmp_path / "cls"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "cls" / "results.json").read_text()).keys() == {"tiny-clip"}
    assert (
        main(
            [
                "eval-tower",
                "--tower",
                "a=tiny-clip",
                "--tower",
                "b=tiny-siglip",
                "--benchmark",
                "fine-grained",
                "--pairs-per-attribute",
                "2",
                "--image-size",
                "32",
                "--output",
                str(tmp_path / "fg"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "fg" / "results.json").read_text())
    assert list(results) == ["a", "b"] and list(results["a"]) == [*ATTRIBUTE_VALUES, "average"]
    for name in ("predictions.csv", "results.md", "chart.png"):
        assert (tmp_path / "cls" / name).is_file() and (tmp_path / "fg" / name).is_file()
    for out, made in (("cls", "classification: synthetic-classification"), ("fg", "fine-grained: synthetic-")):
        assert f"data: synthetic stand-ins ({made}" in (tmp_path / out / "results.md").read_text()


def test_make_eval_data_writes_the_official_layout_once(tmp_path, capsys):
    out = tmp_path / "mmvp"
    assert main(["make-eval-data", "mmvp-vlm", "--output", str(out), "--image-size", "16"]) == 0
    assert len(read_benchmark(out)) == 135
    assert json.loads((out / "generated.json").read_text())["generator"] == "synthetic-mmvp-vlm"  # reports say so
    assert main(["make-eval-data", "mmvp-vlm", "--output", str(out)]) == 2
    assert "already exists: delete it or choose another output directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmark", "mmvp-vlm", "--data", "{tmp}/missing"], "is not a directory"),
        (
            ["--benchmark", "mmvp", "--data", "{mmvp}"],
            "unknown benchmark 'mmvp': use one of mmvp-vlm, classification, fine-grained",
        ),
        (["--benchmark", "mmvp-vlm"], "reads a dataset: pass --data DIR"),
        (["--benchmark", "fine-grained", "--data", "{mmvp}"], "generates its own pairs: drop --data"),
        (["--benchmark", "mmvp-vlm", "--data", "{tmp}"], "no Questions.csv in"),
        (["--benchmark", "classification", "--data", "{mmvp}"], "has 1 class folders"),
        (
            ["--benchmark", "fine-grained", "--preprocess", "official"],
            "--preprocess official reproduces the official MMVP-VLM script",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny, mmvp_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, mmvp=mmvp_dir) for a in args]
    assert main(["eval-tower", "--tower", "tiny-clip", "--output", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_a_missing_tower_or_duplicate_label_is_named(tiny, mmvp_dir, tmp_path, capsys):
    base = ["eval-tower", "--benchmark", "mmvp-vlm", "--data", str(mmvp_dir), "--output", str(tmp_path / "out")]
    assert main([*base, "--tower", str(tmp_path / "no_tower")]) == 2
    assert "no_tower" in capsys.readouterr().err
    assert main([*base, "--tower", "x=tiny-clip", "--tower", "x=tiny-siglip"]) == 2
    assert "two towers are labelled 'x'" in capsys.readouterr().err


def test_if_changed_keeps_a_report_made_from_the_same_inputs(tiny, tmp_path, capsys):
    """Stage 4's freshness rule: the same towers, data and settings reuse the report; a changed tower
    file or setting scores again."""
    import shutil

    tower = tmp_path / "tower"
    shutil.copytree(tiny["clip"], tower)
    argv = [
        "eval-tower",
        "--tower",
        f"t={tower}",
        "--benchmark",
        "fine-grained",
        "--pairs-per-attribute",
        "2",
        "--image-size",
        "32",
        "--output",
        str(tmp_path / "out"),
        "--if-changed",
    ]
    assert main(argv) == 0 and "up to date" not in capsys.readouterr().out
    assert main(argv) == 0 and "fine-grained: up to date" in capsys.readouterr().out
    assert main([*argv[:-3], "--seed", "1", *argv[-3:]]) == 0 and "up to date" not in capsys.readouterr().out
    assert main([*argv[:-3], "--seed", "1", *argv[-3:]]) == 0 and "up to date" in capsys.readouterr().out
    (tower / "preprocessor_config.json").write_text((tower / "preprocessor_config.json").read_text() + " ")
    assert main([*argv[:-3], "--seed", "1", *argv[-3:]]) == 0 and "up to date" not in capsys.readouterr().out
