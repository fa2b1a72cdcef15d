"""The summary marks every table computed on generated data, from what the evaluations recorded."""

import json

from dcr_mllm.evaluation.analysis.summary import summarize


def test_the_summary_says_which_tables_are_synthetic(tmp_path):
    towers, mllms = tmp_path / "eval_tower", tmp_path / "eval_mllm"
    for benchmark in ("mmvp-vlm", "classification"):
        (towers / benchmark).mkdir(parents=True)
        (towers / benchmark / "results.json").write_text(
            json.dumps({"base": {"average": 50.0, "zero_shot_top1": 40.0, "linear_probe_top1": 60.0}})
        )
        (towers / benchmark / "made_from.json").write_text(json.dumps({"settings": {}, "inputs": {}}))
    (mllms / "report").mkdir(parents=True)
    (mllms / "report" / "report.md").write_text("| metric | base |\n|---|---:|\n| mmvp_local/acc | 0.5 |\n")
    real = summarize({}, towers, mllms)
    assert "| zero-shot top-1 | 40.0 |" in real and "synthetic" not in real

    made_from = {"settings": {"synthetic_data": "synthetic-classification"}, "inputs": {}}
    (towers / "classification" / "made_from.json").write_text(json.dumps(made_from))
    sources = {"root": "/data", "synthetic": {"mmvp": "synthetic-mmvp"}}
    (mllms / "report" / "data_sources.json").write_text(json.dumps(sources))
    marked = summarize({}, towers, mllms)
    assert "## Towers (MMVP-VLM, probes; %) — synthetic data" in marked
    assert "| MMVP-VLM average | 50.0 |" in marked and "| zero-shot top-1 (synthetic) | 40.0 |" in marked
    assert "data: synthetic stand-ins (classification: synthetic-classification)" in marked
    assert "## LLaVA on the lmms-eval suite — synthetic data" in marked
    assert "data: synthetic stand-ins (mmvp: synthetic-mmvp), not the published benchmarks" in marked
