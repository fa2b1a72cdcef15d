"""The world's default pipeline pieces: conversations, the question set and its scoring, build-world,
the tower report and the summary tables."""

import json
import random
import re

import pytest

from dcr_mllm.cli import main
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.summary import tower_tables
from dcr_mllm.evaluation.mllm import world_task
from dcr_mllm.world.conversations import KINDS, world_qa_rows, world_question, write_world_conversations
from dcr_mllm.world.models import MINI
from dcr_mllm.world.prepare import prepare_world
from dcr_mllm.world.scenes import (
    FINE_ATTRIBUTES,
    NUMBER_WORDS,
    WORLD_VALUES,
    detailed_caption,
    read_world,
    sample_scenes,
)

_YES_NO = {  # the value each yes/no question names, recovered from its text
    "shape": r"^Is there a (\w+) in the image\?",
    "color": r"^Are the shapes (\w+)\?",
    "count": r"^Is the number of shapes (\w+)\?",
    "position": r"^Are the shapes on the (\w+)\?",
    "orientation": r"^Are the shapes facing (\w+)\?",
    "size": r"^Are the shapes (\w+)\?",
    "background": r"^Is the background (\w+)\?",
}


def true_word(scene, attribute):
    value = getattr(scene, attribute)
    return NUMBER_WORDS[value] if attribute == "count" else value


def check_answer(scene, attribute, kind, question, answer):
    """Recompute the answer from the scene's ground truth and the question's own words."""
    if kind == "open":
        assert answer == true_word(scene, attribute).capitalize() and "\nA. " not in question, question
        assert question.endswith("\nAnswer the question using a single word or phrase.")
    elif kind == "yes_no":
        asked = re.match(_YES_NO[attribute], question).group(1)
        assert answer == ("Yes" if asked == true_word(scene, attribute) else "No"), question
        assert question.endswith("\nAnswer the question using a single word or phrase.")
    else:
        options = dict(re.findall(r"^([AB])\. (\w+)$", question, flags=re.MULTILINE))
        assert sorted(options) == ["A", "B"] and options["A"] != options["B"], question
        assert options[answer] == true_word(scene, attribute), question
        assert question.endswith("\nAnswer with the option's letter from the given choices directly.")


def test_questions_are_right_and_balanced():
    rng = random.Random(0)
    answers = {kind: [] for kind in KINDS}
    assert KINDS == ("open", "yes_no", "choice")
    for scene in sample_scenes(300, 20):
        for attribute in WORLD_VALUES:
            for kind in KINDS:
                qa = world_question(scene, attribute, kind, rng)
                check_answer(scene, attribute, kind, qa["question"], qa["answer"])
                answers[kind].append(qa["answer"])
    for kind, first in (("yes_no", "Yes"), ("choice", "A")):  # open answers are the scenes' values
        share = answers[kind].count(first) / len(answers[kind])
        assert 0.45 < share < 0.55, f"{kind}: {share:.2f} of answers are {first}"


def test_conversations_caption_and_ask_about_the_scenes(tmp_path):
    out = write_world_conversations(tmp_path / "llava", count=12, seed=13)
    scenes = sample_scenes(12, 13)
    pretrain = json.loads((out / "pretrain.json").read_text())
    finetune = json.loads((out / "finetune.json").read_text())
    assert [r["conversations"][1]["value"] for r in pretrain] == [detailed_caption(s) for s in scenes]
    kinds = set()
    for record, scene in zip(finetune, scenes):
        assert (out / "images" / record["image"]).is_file()
        turns = record["conversations"]
        assert (
            len(turns) == 6
            and turns[0]["value"].startswith("<image>\n")
            and "<image>" not in "".join(t["value"] for t in turns[1:])
        )
        for human, gpt in zip(turns[0::2], turns[1::2]):
            question = human["value"].removeprefix("<image>\n")
            kind = (
                "choice"
                if "\nA. " in question
                else "yes_no"
                if any(re.match(p, question) for p in _YES_NO.values())
                else "open"
            )
            if kind == "yes_no":  # the attribute from the words (colour and size share a pattern: either matches)
                attribute = next(
                    a
                    for a in WORLD_VALUES
                    if re.match(_YES_NO[a], question)
                    and re.match(_YES_NO[a], question).group(1) in map(str, [*WORLD_VALUES[a], *NUMBER_WORDS.values()])
                )
                check_answer(scene, attribute, kind, question, gpt["value"])
            kinds.add(kind)
    assert kinds == set(KINDS)
    # the default schedule's set: every attribute asked open about each image, once, in a random order
    opened = json.loads((out / "finetune_open.json").read_text())
    orders = set()
    for record, scene, mixed in zip(opened, scenes, finetune):
        turns = record["conversations"]
        assert (
            record["image"] == mixed["image"]
            and turns[0]["value"].startswith("<image>\n")
            and len(turns) == 2 * len(WORLD_VALUES)
        )
        asked = [
            next(
                a
                for a in WORLD_VALUES
                if human["value"]
                .removeprefix("<image>\n")
                .startswith(world_question(scene, a, "open", random.Random(0))["question"])
            )
            for human in turns[0::2]
        ]
        assert sorted(asked) == sorted(WORLD_VALUES)
        assert [gpt["value"] for gpt in turns[1::2]] == [
            world_question(scene, a, "open", random.Random(0))["answer"] for a in asked
        ]
        orders.add(tuple(asked))
    assert len(orders) > 1
    with pytest.raises(DcrError, match="training seed"):
        write_world_conversations(tmp_path / "other", count=2, seed=1)


def test_question_set_asks_every_attribute_of_every_image_in_every_kind_balanced():
    rows = world_qa_rows(6, seed=2)
    scenes = sample_scenes(6, 2)
    assert len(rows) == 6 * len(WORLD_VALUES) * len(KINDS) and len({r["question_id"] for r in rows}) == len(rows)
    for row in rows:
        index = int(row["question_id"].split("-")[0])
        check_answer(scenes[index], row["attribute"], row["kind"], row["question"], row["answer"])
    for (
        attribute
    ) in WORLD_VALUES:  # each attribute and kind on every image, its yes/no and A/B answers split exactly in half
        for kind, first in (("open", None), ("yes_no", "Yes"), ("choice", "A")):
            answers = [r["answer"] for r in rows if r["attribute"] == attribute and r["kind"] == kind]
            assert len(answers) == 6 and (first is None or answers.count(first) == 3), (attribute, kind, answers)
    assert {r["kind"] for r in world_qa_rows(2, seed=2, kinds=("open",))} == {"open"}
    with pytest.raises(DcrError, match="training images"):
        world_qa_rows(2, seed=12)
    with pytest.raises(DcrError, match="choose from"):
        world_qa_rows(2, seed=2, kinds=("essay",))


def test_world_answers_are_scored_per_attribute():
    docs = [
        {"attribute": "position", "kind": "yes_no", "answer": "Yes", "options": "[]"},
        {"attribute": "position", "kind": "choice", "answer": "B", "options": json.dumps(["left", "top"])},
        {"attribute": "color", "kind": "choice", "answer": "A", "options": json.dumps(["red", "blue"])},
        {"attribute": "color", "kind": "yes_no", "answer": "No", "options": "[]"},
        {"attribute": "count", "kind": "open", "answer": "Two", "options": "[]"},
        {"attribute": "count", "kind": "open", "answer": "Two", "options": "[]"},
    ]
    docs = [{**doc, "question_id": f"q{i}"} for i, doc in enumerate(docs)]
    # right (parsed), right (the option's text), wrong, right, right (first word), wrong
    responses = ["Yes.", "top", "B", "no", "two shapes", "Three."]
    results = [world_task.world_process_results(d, [r]) for d, r in zip(docs, responses)]
    records = [r["world_accuracy"] for r in results]
    assert all(set(r) == set(world_task.WORLD_METRICS) for r in results)
    assert [r["question_id"] for r in records] == [f"q{i}" for i in range(6)]  # each answer can be paired across models
    assert world_task.world_accuracy(records) == pytest.approx(4 / 6)
    part = world_task.WORLD_PART_ACCURACY
    assert (
        part["world_position_accuracy"](records),
        part["world_color_accuracy"](records),
        part["world_count_accuracy"](records),
    ) == (1.0, 0.5, 0.5)
    assert (
        part["world_open_accuracy"](records),
        part["world_yes_no_accuracy"](records),
        part["world_choice_accuracy"](records),
    ) == (0.5, 1.0, 0.5)
    assert part["world_size_accuracy"](records) == 0.0  # none asked: 0, as mmvp_accuracy
    # world_local_open: the same record, only under the metrics its YAML lists (no yes/no or choice to aggregate)
    opened = world_task.world_open_process_results(docs[4], ["two"])
    assert (
        set(opened)
        == set(world_task.WORLD_OPEN_METRICS)
        == set(world_task.WORLD_METRICS) - {"world_yes_no_accuracy", "world_choice_accuracy"}
    )
    assert opened["world_accuracy"] == {"question_id": "q4", "attribute": "count", "kind": "open", "correct": True}
    import datasets

    table = datasets.Dataset.from_list([{k: v for k, v in d.items()} for d in docs])
    assert world_task.world_open_docs(table)["question_id"] == ["q4", "q5"]


def test_prepare_eval_data_world_writes_the_task_schema(tmp_path, capsys):
    import datasets

    assert main(["prepare-eval-data", "--world", "3", "--output", str(tmp_path)]) == 0
    table = datasets.Dataset.from_parquet(str(tmp_path / "world" / "test.parquet"))
    assert table.num_rows == 3 * len(WORLD_VALUES) * len(KINDS)
    assert set(table.column_names) == {"question_id", "attribute", "kind", "question", "answer", "options", "image"}
    assert table[0]["image"].size == (32, 32)
    assert main(["prepare-eval-data", "--world", "-1", "--output", str(tmp_path / "bad")]) == 2


def test_build_world_writes_every_set_once(tmp_path):
    paths = prepare_world(
        tmp_path / "world", MINI, world_root=tmp_path / "models", shard_count=20, conversation_count=5, eval_count=12
    )
    assert {"world-clip", "world-sd", "shards", "llava", "eval", "val"} == set(paths)
    assert read_world(paths["val"]) and paths["val"] != paths["eval"]
    assert (paths["world-clip"] / "model.safetensors").is_file() and (paths["world-sd"] / "unet").is_dir()
    assert len(list(paths["shards"].glob("*.tar"))) == 1 and len(read_world(paths["eval"])) == 12
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (paths["eval"] / "labels.csv", paths["llava"] / "finetune.json", paths["shards"] / "00000.tar")
    }
    prepare_world(
        tmp_path / "world", MINI, world_root=tmp_path / "models", shard_count=20, conversation_count=5, eval_count=12
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a complete set is kept"


def test_eval_tower_world_and_the_summary_tables(tiny, tmp_path, capsys):
    assert main(["make-eval-data", "world", "--output", str(tmp_path / "eval"), "--count", "24", "--seed", "3"]) == 0
    out = tmp_path / "tower_eval" / "world"
    assert (
        main(
            [
                "eval-tower",
                "--tower",
                f"base={tiny['clip']}",
                "--tower",
                f"other={tiny['clip']}",
                "--benchmark",
                "world",
                "--data",
                str(tmp_path / "eval"),
                "--pairs-per-attribute",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["base"] == results["other"], "the same tower scores the same"
    assert {f"probe_global/{a}" for a in WORLD_VALUES} | {f"pairs/{a}" for a in FINE_ATTRIBUTES} | {
        "class/zero_shot"
    } <= results["base"].keys()
    text = "\n".join(tower_tables(tmp_path / "tower_eval"))
    assert "| class zero-shot (D-Ability) |" in text
    fine = results["base"]["probe_global/fine_mean"]
    assert f"| fine attributes, global-embedding probe (mean) | {fine:.1f} | {fine:.1f} |" in text
    position = [results["base"][f"{kind}/position"] for kind in ("probe_global", "probe_layer", "pairs")]
    assert "| position | " + " | ".join(f"{v:.1f} / {v:.1f}" for v in position) + " |" in text
    # a set without labels is refused before any tower loads
    assert (
        main(
            [
                "eval-tower",
                "--tower",
                str(tiny["clip"]),
                "--benchmark",
                "world",
                "--data",
                str(tmp_path),
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "labels.csv" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_summary_shows_each_llavas_world_accuracy_with_intervals_and_paired_tests(tmp_path):
    from dcr_mllm.evaluation.analysis.significance import compare_world
    from dcr_mllm.evaluation.analysis.summary import summarize

    def answers(
        right: dict[str, int],
    ) -> dict[str, dict]:  # 40 questions per attribute and kind; the first `right` of them right
        return {
            f"{i:05d}-{a}-{k}": {"attribute": a, "kind": k, "correct": i < right.get(f"{a}/{k}", 20)}
            for a in ("color", "position")
            for k in KINDS
            for i in range(40)
        }

    comparison = compare_world(
        {"dcr": answers({"position/open": 36, "position/yes_no": 30}), "base": answers({"position/open": 10})}
    )
    (tmp_path / "mllm" / "report").mkdir(parents=True)
    (tmp_path / "mllm" / "report" / "world_significance.json").write_text(json.dumps(comparison))
    text = summarize({}, tmp_path / "tower", tmp_path / "mllm")
    assert "| questions | dcr [95 % interval] | base [95 % interval] | dcr vs base (points, p) |" in text
    assert "| color | 50.0 [41.2, 58.8] | 50.0 [41.2, 58.8] | +0.0 (p=1) |" in text  # Wilson: 60 of 120
    assert (
        "| position / open | 90.0 [76.9, 96.0] | 25.0 [14.2, 40.2] | **+65.0** (p=" in text
    )  # 26 questions only dcr got right
    assert "| position / yes/no | 75.0 [59.8, 85.8] | 50.0 [35.2, 64.8] | **+25.0** (p=0.002) |" in text
    assert "240 questions, 40 per attribute and kind" in text
    assert "Does what the tower holds reach" not in text  # no tower scores to set beside them
    # with the towers' world scores: each attribute's feature-layer probe beside the LLaVA's open-question accuracy, and the chart
    (tmp_path / "tower" / "world").mkdir(parents=True)
    scores = dict.fromkeys(
        [
            "class/zero_shot",
            "class/probe",
            "probe_global/fine_mean",
            "probe_layer/fine_mean",
            "pairs/mean",
            "probe_global/position",
            "probe_global/color",
            "probe_layer/color",
        ],
        50.0,
    )
    towers = {
        "base": {**scores, "probe_layer/position": 62.0},
        "dcr": {**scores, "probe_layer/position": 85.5},
        "other": {**scores, "probe_layer/position": 1.0},
    }  # no LLaVA of that name: not in the comparison
    (tmp_path / "tower" / "world" / "results.json").write_text(json.dumps(towers))
    text = summarize({}, tmp_path / "tower", tmp_path / "mllm", tmp_path / "summary.png")
    assert "| attribute | probe: base | probe: dcr | LLaVA: base | LLaVA: dcr |" in text and "probe: other" not in text
    assert "| position | 62.0 | 85.5 | 25.0 [14.2, 40.2] | 90.0 [76.9, 96.0] |" in text
    # the learning targets: yes/no 20 points above chance; open within 10 of the probe only where the probe reads more than 80
    assert (
        "| target | base | dcr |" in text
        and "| yes/no ≥ 70 | 50.0 (not met: 70.0 needed) | 62.5 (not met: 70.0 needed) |" in text
    )
    assert "| position / open ≥ its probe − 10 | - | 90.0 (met) |" in text and "| color / open ≥" not in text
    assert (tmp_path / "summary.png").stat().st_size > 0 and str(tmp_path / "summary.png") in text
    assert "were not scored" not in text
    # the default pipeline's world_local_open: open questions only, so no yes/no or choice target, and the summary says why
    opened = {
        name: {q: r for q, r in answers({"position/open": right}).items() if r["kind"] == "open"}
        for name, right in (("dcr", 36), ("base", 10))
    }
    (tmp_path / "mllm" / "report" / "world_significance.json").write_text(json.dumps(compare_world(opened)))
    text = summarize({}, tmp_path / "tower", tmp_path / "mllm", tmp_path / "summary.png")
    assert (
        "| position / open ≥ its probe − 10 | - | 90.0 (met) |" in text
        and "yes/no ≥" not in text
        and "choice ≥" not in text
    )
    assert "Yes/no and multiple-choice questions were not scored in this run (`world_local_open`" in text
    assert "| position / open | 90.0 [76.9, 96.0] | 25.0 [14.2, 40.2] |" in text and "| position / yes/no |" not in text


def test_run_all_says_what_it_runs_and_refuses_a_bad_config_dir(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "stages" / "run_all.sh"
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "the tiny world (default)" in shown and "--tiny" in shown
    refused = subprocess.run(["bash", str(script), "--config-dir", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0 and "enhance.yaml" in refused.stderr
    assert "--full" in shown
    for argv in (["--full", "--tiny"], ["--config-dir", str(tmp_path), "--full"]):  # the long schedule is the world's
        refused = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True)
        assert refused.returncode == 2 and "--full" in refused.stderr and not (tmp_path / "outputs").exists(), argv


def test_full_schedule_differs_from_the_default_only_in_its_questions_length_and_outputs(monkeypatch):
    from pathlib import Path

    from dcr_mllm.config import read_config_file

    configs = Path(__file__).resolve().parents[2] / "stages" / "configs" / "world"
    default, full = (read_config_file(configs / name) for name in ("llava.yaml", "llava_full.yaml"))
    assert full["finetune"].pop("max_steps") > 2 * default["finetune"].pop("max_steps")
    assert full.pop("output_dir") != default.pop("output_dir")
    full["finetune_data"].pop("eval_every"), default["finetune_data"].pop("eval_every")
    # the default trains on the open questions it is scored on (world_local_open), --full on every kind (world_local)
    assert (default["finetune_data"].pop("json"), full["finetune_data"].pop("json")) == (
        "outputs/world/llava/finetune_open.json",
        "outputs/world/llava/finetune.json",
    )
    assert full == default
    from dcr_mllm.pipeline.run_all import plan

    monkeypatch.chdir(configs.parents[2])  # run_all.sh runs from the repository root
    default, long = plan(), plan(full=True)
    assert (default.world_task, default.suffix, Path(default.llava_config).name) == (
        "world_local_open",
        "",
        "llava.yaml",
    )
    assert (long.world_task, long.suffix, Path(long.llava_config).name) == ("world_local", "_full", "llava_full.yaml")
    assert (
        default.world and long.world and long.llava_out != default.llava_out and long.enhance_out == default.enhance_out
    )


def test_the_packaged_world_configs_are_the_stages_ones():
    """`dcr_mllm/configs/*_world.yaml` ship in the wheel; `stages/configs/world/` is what run_all reads: one content
    (each staged file inherits the packaged one and sets nothing of its own)."""
    from pathlib import Path

    import yaml

    from dcr_mllm.config import read_config_file

    repo = Path(__file__).resolve().parents[2]
    for packaged, staged in (
        ("enhance_world.yaml", "enhance.yaml"),
        ("llava_world.yaml", "llava.yaml"),
        ("llava_world_full.yaml", "llava_full.yaml"),
    ):
        staged = repo / "stages" / "configs" / "world" / staged
        assert yaml.safe_load(staged.read_text()) == {"inherit": f"../../../dcr_mllm/configs/{packaged}"}
        assert read_config_file(staged) == read_config_file(repo / "dcr_mllm" / "configs" / packaged)
