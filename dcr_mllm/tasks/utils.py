"""Task functions for the YAMLs beside this file; the logic lives in one module per task family
(``dcr_mllm.evaluation.mllm.mmvp_task``, ``pope_task``, ``world_task``).

Names in capitals are the local data files under $DCR_EVAL_DATA (default ~/.cache/dcr_mllm/eval_data),
resolved when lmms-eval reads the YAML, so the *_local tasks work from any working directory.
"""

from lmms_eval.tasks.countbenchqa.utils import (  # noqa: F401  (referenced from the YAMLs)
    countbenchqa_doc_to_text,
    countbenchqa_doc_to_visual,
    countbenchqa_process_results,
)

from dcr_mllm.evaluation.mllm.cv_bench_task import (  # noqa: F401  (referenced from the YAMLs)
    cv_bench_both_process_results,
    cv_bench_doc_to_text,
    cv_bench_doc_to_visual,
    cv_bench_lmms_eval_accuracy,
    cv_bench_paper_score,
)
from dcr_mllm.evaluation.mllm.eval_data import data_file
from dcr_mllm.evaluation.mllm.mmvp_task import (  # noqa: F401  (referenced from the YAMLs)
    mmvp_accuracy,
    mmvp_doc_to_text,
    mmvp_doc_to_visual,
    mmvp_pair_accuracy,
    mmvp_process_results,
    mmvp_target,
)
from dcr_mllm.evaluation.mllm.pope_task import (  # noqa: F401  (referenced from the YAMLs)
    pope_accuracy,
    pope_doc_to_text,
    pope_doc_to_visual,
    pope_f1_score,
    pope_precision,
    pope_pred_yes_ratio,
    pope_process_results,
    pope_recall,
)
from dcr_mllm.evaluation.mllm.world_task import (  # noqa: F401  (referenced from the YAMLs)
    WORLD_PART_ACCURACY,
    world_accuracy,
    world_doc_to_text,
    world_doc_to_visual,
    world_open_docs,
    world_open_process_results,
    world_process_results,
)

MMVP_TEST = data_file("mmvp", "test.parquet")
POPE_ADVERSARIAL = data_file("pope", "adversarial.parquet")
POPE_POPULAR = data_file("pope", "popular.parquet")
POPE_RANDOM = data_file("pope", "random.parquet")
WORLD_TEST = data_file("world", "test.parquet")
CV_BENCH_TEST = data_file("cv_bench", "test.parquet")
COUNTBENCHQA_TEST = data_file("countbenchqa", "test.parquet")


def __getattr__(name: str):
    """``world_<attribute>_accuracy`` and ``world_<kind>_accuracy``, as the world YAMLs name them
    (lmms-eval looks ``!function utils.NAME`` up with ``getattr``)."""
    if name in WORLD_PART_ACCURACY:
        return WORLD_PART_ACCURACY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
