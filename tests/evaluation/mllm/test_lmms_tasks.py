"""The local MMVP/POPE tasks' answer parsing and metrics, against values computed by hand and
against lmms-eval's own MMVP/POPE code."""

import csv
import importlib.util
import re
from pathlib import Path

import lmms_eval
import pytest

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.mllm import eval_data, mmvp_task, pope_task, task_common

LMMS_TASKS = Path(lmms_eval.__file__).parent / "tasks"
# lmms-eval 0.7.3, lmms_eval/tasks/mmvp/utils.py:15-18 (1-based Index -> corrected answer):
#   Index 99: (a) -> (b); Index 100: (b) -> (a); Index 279: (a) -> (b); Index 280: (b) -> (a)
LMMS_EVAL_MMVP_CORRECTIONS = {99: ("(a)", "(b)"), 100: ("(b)", "(a)"), 279: ("(a)", "(b)"), 280: ("(b)", "(a)")}


@pytest.mark.parametrize(
    "response, letter",
    [
        ("A", "A"),
        ("b", "B"),
        ("(a)", "A"),
        ("(B).", "B"),
        ("a) open", "A"),
        ("B. Closed", "B"),
        ("The answer is (b).", "B"),
        ("Option A", "A"),
        ("closed", "B"),
        ("Open.", "A"),
        ("maybe", ""),
        ("About this", ""),
    ],
)
def test_option_letters_ignore_formatting(response, letter):
    assert task_common.option_letter(response, ["Open", "Closed"]) == letter


@pytest.mark.parametrize(
    "response, answer",
    [
        ("Yes", "yes"),
        ("Yes.", "yes"),
        ("yes, there is a dog", "yes"),
        ("No.", "no"),
        ("NO", "no"),
        ("There is no dog.", "no"),
        ("There isn't one", "no"),
        ("There is a dog.", "yes"),
    ],
)
def test_yes_no_ignores_formatting(response, answer):
    assert task_common.yes_no(response) == answer


def mmvp_doc(index, answer):
    return {
        "Index": index,
        "Question": "Is the door open or closed?",
        "Options": "(a) Open (b) Closed",
        "Correct Answer": answer,
    }


def test_mmvp_metrics_by_hand():
    docs = [
        mmvp_doc(1, "(a)"),
        mmvp_doc(2, "(b)"),
        mmvp_doc(3, "(a)"),
        mmvp_doc(4, "(b)"),
        mmvp_doc(5, "(a)"),
        mmvp_doc(6, "(b)"),
    ]
    responses = ["(a)", "B.", "A", "a", "open", "The answer is B"]  # pair 1 right, pair 2 half, pair 3 right
    results = [mmvp_task.mmvp_process_results(d, [r])["mmvp_accuracy"] for d, r in zip(docs, responses)]
    assert mmvp_task.mmvp_accuracy(results) == pytest.approx(5 / 6)
    assert mmvp_task.mmvp_pair_accuracy(results) == pytest.approx(2 / 3)
    assert (
        mmvp_task.mmvp_doc_to_text(docs[0], {"pre_prompt": "", "post_prompt": "\nAnswer."})
        == "Is the door open or closed?\nA. Open\nB. Closed\nAnswer."
    )


def test_pope_metrics_by_hand():
    truths = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    responses = ["Yes.", "yes", "No", "no.", "Yes, there is.", "No", "There is no cat.", "No."]
    results = [
        pope_task.pope_process_results({"answer": a, "question": "q"}, [r])["pope_accuracy"]
        for a, r in zip(truths, responses)
    ]
    # predictions: yes yes no no yes no no no -> tp=2, fp=1, tn=3, fn=2
    assert pope_task.pope_accuracy(results) == pytest.approx(5 / 8)
    assert pope_task.pope_precision(results) == pytest.approx(2 / 3)
    assert pope_task.pope_recall(results) == pytest.approx(2 / 4)
    assert pope_task.pope_f1_score(results) == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert pope_task.pope_pred_yes_ratio(results) == pytest.approx(3 / 8), "POPE's yes-ratio counts predictions"


def test_pope_metrics_match_lmms_eval_and_the_yes_ratio_is_named_apart():
    """On answers lmms-eval parses as we do (plain yes/no), accuracy, precision, recall and F1 are
    lmms-eval's own functions' values; its pope_yes_ratio counts ground truths, ours predictions."""
    spec = importlib.util.spec_from_file_location("lmms_pope_utils", LMMS_TASKS / "pope" / "utils.py")
    pope = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pope)
    truths = ["yes", "yes", "yes", "no", "no", "no", "no", "yes", "no", "no"]
    answers = ["yes", "yes", "no", "no", "yes", "no", "no", "no", "no", "yes"]

    def doc(i):
        return {"question_id": i, "answer": truths[i], "question": "q"}

    theirs = [pope.pope_process_results(doc(i), [a])["pope_accuracy"] for i, a in enumerate(answers)]
    ours = [pope_task.pope_process_results(doc(i), [a])["pope_accuracy"] for i, a in enumerate(answers)]
    for name in ("accuracy", "precision", "recall", "f1_score"):
        assert getattr(pope_task, f"pope_{name}")(ours) == pytest.approx(
            getattr(pope, f"pope_aggregate_{name}")(theirs)
        ), name
    answers = ["no"] * len(truths)  # a model that never says yes
    theirs = [pope.pope_process_results(doc(i), [a])["pope_accuracy"] for i, a in enumerate(answers)]
    ours = [pope_task.pope_process_results(doc(i), [a])["pope_accuracy"] for i, a in enumerate(answers)]
    assert pope.pope_aggregate_yes_ratio(theirs) == pytest.approx(4 / 10), "lmms-eval's: the share of ground-truth yes"
    assert pope_task.pope_pred_yes_ratio(ours) == 0.0, "ours: the share of yes predictions"
    template = (eval_data.task_dir() / "_pope_local_template_yaml").read_text()
    assert "metric: pope_yes_ratio" not in template and "metric: pope_pred_yes_ratio" in template


def test_task_utils_point_at_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DCR_EVAL_DATA", str(tmp_path))
    spec = importlib.util.spec_from_file_location("eval_tasks_utils", eval_data.task_dir() / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert str(tmp_path / "mmvp" / "test.parquet") == utils.MMVP_TEST
    assert str(tmp_path / "pope" / "adversarial.parquet") == utils.POPE_ADVERSARIAL


def test_synthetic_sets_have_the_benchmark_schema(tmp_path):
    import datasets

    mmvp = datasets.Dataset.from_parquet(str(eval_data.synthetic_mmvp(tmp_path, num_pairs=3)))
    assert mmvp.column_names == ["Index", "Question", "Options", "Correct Answer", "image"]
    assert mmvp["Index"] == [1, 2, 3, 4, 5, 6] and mmvp["Correct Answer"] == ["(a)", "(b)"] * 3
    for path in eval_data.synthetic_pope(tmp_path, questions_per_split=4):
        pope = datasets.Dataset.from_parquet(str(path))
        assert set(pope.column_names) == {"question_id", "question", "answer", "category", "image"}
        assert pope["answer"] == ["yes", "no", "yes", "no"]


def test_prepare_from_the_original_files(tmp_path):
    from PIL import Image

    mmvp = tmp_path / "MMVP"
    (mmvp / "MMVP Images").mkdir(parents=True)
    (mmvp / "Questions.csv").write_text(
        "Index,Question,Options,Correct Answer\n1,Open?,(a) Open (b) Closed,(a)\n2,Open?,(a) Open (b) Closed,(b)\n"
    )
    for i in (1, 2):
        Image.new("RGB", (20, 20)).save(mmvp / "MMVP Images" / f"{i}.jpg")
    pope, coco = tmp_path / "POPE", tmp_path / "coco"
    pope.mkdir()
    coco.mkdir()
    Image.new("RGB", (20, 20)).save(coco / "COCO_val2014_000000000001.jpg")
    for split in eval_data.POPE_SPLITS:
        (pope / f"coco_pope_{split}.json").write_text(
            '{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?", "label": "no"}\n'
        )
    out = tmp_path / "out"
    assert eval_data.prepare_mmvp(mmvp, out).is_file()
    assert len(eval_data.prepare_pope(pope, coco, out)) == 3
    (mmvp / "MMVP Images" / "2.jpg").unlink()
    with pytest.raises(DcrError, match="2.jpg is missing"):
        eval_data.prepare_mmvp(mmvp, out)
    (mmvp / "Questions.csv").write_text("Index,Question\nx,y\n")
    with pytest.raises(DcrError, match="line 2 is malformed"):
        eval_data.prepare_mmvp(mmvp, out)


def test_mmvp_corrections_are_lmms_evals(tmp_path):
    """prepare_mmvp applies exactly the corrections lmms-eval's MMVP data carries (transcribed above,
    and read back from the installed lmms-eval's own list), and nothing else."""
    import datasets
    from PIL import Image

    source = (LMMS_TASKS / "mmvp" / "utils.py").read_text()
    listed = {
        int(i): (f"({a})", f"({b})")
        for i, a, b in re.findall(r"Index (\d+) \(row \d+, 0-based\): Corrected from \((\w)\) to \((\w)\)", source)
    }
    assert listed == LMMS_EVAL_MMVP_CORRECTIONS
    assert {i: after for i, (_, after) in LMMS_EVAL_MMVP_CORRECTIONS.items()} == eval_data.MMVP_ANSWER_CORRECTIONS

    mmvp = tmp_path / "MMVP"
    (mmvp / "MMVP Images").mkdir(parents=True)
    indices = [97, 98, 99, 100, 279, 280]
    original = {97: "(a)", 98: "(b)", **{i: before for i, (before, _) in LMMS_EVAL_MMVP_CORRECTIONS.items()}}
    with open(mmvp / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Index", "Question", "Options", "Correct Answer"])
        for i in indices:
            writer.writerow([i, "Long or short?", "(a) Long (b) Short", original[i]])
            Image.new("RGB", (8, 8)).save(mmvp / "MMVP Images" / f"{i}.jpg")
    rows = datasets.Dataset.from_parquet(str(eval_data.prepare_mmvp(mmvp, tmp_path / "out")))
    answers = dict(zip(rows["Index"], rows["Correct Answer"]))
    assert answers == {97: "(a)", 98: "(b)", 99: "(b)", 100: "(a)", 279: "(b)", 280: "(a)"}
    assert [mmvp_task.mmvp_target(doc) for doc in rows.select_columns(["Correct Answer"])] == [
        "A",
        "B",
        "B",
        "A",
        "B",
        "A",
    ]


def test_short_answer_instructions_are_lmms_evals():
    """LLaVA-1.5's short-answer instructions, as lmms-eval 0.7.3 appends them: the world's
    conversations and the synthetic LLaVA data use these exact strings."""
    from dcr_mllm.prompts import CHOICE_PROMPT, SHORT_ANSWER_PROMPT

    def post_prompt(relative: str, line: int) -> str:
        text = (LMMS_TASKS / relative).read_text().splitlines()[line - 1]
        return re.fullmatch(r'\s*post_prompt: "(.*)"', text).group(1).encode().decode("unicode_escape")

    assert post_prompt("pope/pope.yaml", 36) == SHORT_ANSWER_PROMPT  # lmms_eval/tasks/pope/pope.yaml:36
    assert post_prompt("gqa/gqa.yaml", 30) == SHORT_ANSWER_PROMPT  # lmms_eval/tasks/gqa/gqa.yaml:30
    assert (
        post_prompt("mmvp/_default_template_yaml", 23) == CHOICE_PROMPT
    )  # lmms_eval/tasks/mmvp/_default_template_yaml:23
