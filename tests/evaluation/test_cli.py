"""``dcr-mllm eval-tower`` and ``make-eval-data``: the report files, and one-line errors for bad input."""

import csv
import json
import shutil

import pytest
from PIL import Image

from dcr_mllm.cli import main
from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES
from dcr_mllm.evaluation.tower import CATEGORIES, read_benchmark
from dcr_mllm.presets.released import RECORD


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


def test_several_benchmarks_make_one_table_and_chart_with_intervals_and_reported_numbers(
    tiny, mmvp_dir, tmp_path, capsys
):
    released = tmp_path / "diva-like"  # a tower convert-tower --preset wrote: its record names the release
    shutil.copytree(tiny["clip"], released)
    (released / RECORD).write_text(json.dumps({"preset": "diva-clip-l14-224"}))
    out = tmp_path / "compare"
    towers = ["--tower", f"base={tiny['clip']}", "--tower", f"diva={released}"]
    benchmarks = ["--benchmark", f"mmvp-vlm={mmvp_dir}", "--benchmark", "fine-grained"]
    settings = ["--pairs-per-attribute", "2", "--image-size", "32", "--batch-size", "50"]
    assert main(["eval-tower", *towers, *benchmarks, *settings, "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "mmvp-vlm/average" in results["diva"] and "fine-grained/average" in results["diva"]
    assert (
        json.loads((out / "mmvp-vlm" / "results.json").read_text())["diva"]["average"]
        == results["diva"]["mmvp-vlm/average"]
    )
    details = json.loads((out / "details.json").read_text())
    average = details["diva"]["mmvp-vlm/average"]
    assert average["reported"]["value"] == 25.9 and "baaivision/DIVA README.md" in average["reported"]["source"]
    assert average["n"] == 135 and average["vs_first"]["p"] == 1.0  # the same weights as base: no discordant pair
    assert details["base"]["mmvp-vlm/average"]["reported"] is None  # a local tower: nothing is reported for it
    table = (out / "results.md").read_text()
    assert "# Tower comparison" in table and "; reported 25.9" in table and "- diva: DIVA, baaivision" in table
    assert "data: synthetic stand-ins (mmvp-vlm: " in table  # the MMVP-VLM folder here is generated
    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG"
    capsys.readouterr()
    assert main(["eval-tower", *towers, *benchmarks, "--data", str(mmvp_dir), "--output", str(tmp_path / "x")]) == 2
    assert "leave out --data" in capsys.readouterr().err
    assert main(["eval-tower", *towers, "--benchmark", "mmvp-vlm", "--benchmark", "world", "--output", "y"]) == 2
    assert "--benchmark mmvp-vlm needs its data: NAME=DATA" in capsys.readouterr().err


def test_a_base_backbone_is_reported_as_the_release_tables_print_it():
    from dcr_mllm.evaluation.tower.run import reported_scores

    value, source = reported_scores("clip-l14-224", "mmvp-vlm")["average"]
    assert value == 19.3  # DIVA and GenHancer print 19.3, DCR 19.2
    assert "DCR prints 19.2" in source and "GenHancer prints 19.3" in source
    assert reported_scores("openai/clip-vit-large-patch14-336", "mmvp-vlm")["average"][0] == 20.0
    assert reported_scores("clip-l14-224", "classification") == {}
