"""The lmms-eval tasks of dcr-mllm (YAMLs + ``utils.py``), shipped with the package.

lmms-eval finds them with ``--include_path "$(dcr-mllm eval-task-dir)"`` (or the repository's
``eval_tasks`` link to this folder); one module per task family in ``dcr_mllm.evaluation.mllm`` holds their logic (``tasks.utils`` names them).
"""
