"""Task functions for the YAMLs beside this file; the logic lives in dcr_mllm.evaluation.lmms_tasks.

Names in capitals are the local data files under $DCR_EVAL_DATA (default ~/.cache/dcr_mllm/eval_data),
resolved when lmms-eval reads the YAML, so the *_local tasks work from any working directory.
"""

from dcr_mllm.evaluation.lmms_tasks import (  # noqa: F401  (referenced from the YAMLs)
    data_file,
    mmvp_accuracy,
    mmvp_doc_to_text,
    mmvp_doc_to_visual,
    mmvp_pair_accuracy,
    mmvp_process_results,
    mmvp_target,
    pope_accuracy,
    pope_doc_to_text,
    pope_doc_to_visual,
    pope_f1_score,
    pope_precision,
    pope_pred_yes_ratio,
    pope_process_results,
    pope_recall,
)
from dcr_mllm.evaluation.world_task import (  # noqa: F401  (referenced from the YAMLs)
    WORLD_PART_ACCURACY,
    world_accuracy,
    world_doc_to_text,
    world_doc_to_visual,
    world_open_docs,
    world_open_process_results,
    world_process_results,
)

globals().update(WORLD_PART_ACCURACY)  # world_<attribute>_accuracy and world_<kind>_accuracy, as the world YAMLs name them

MMVP_TEST = data_file("mmvp", "test.parquet")
POPE_ADVERSARIAL = data_file("pope", "adversarial.parquet")
POPE_POPULAR = data_file("pope", "popular.parquet")
POPE_RANDOM = data_file("pope", "random.parquet")
WORLD_TEST = data_file("world", "test.parquet")
