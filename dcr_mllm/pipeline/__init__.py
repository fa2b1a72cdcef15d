"""The shell pipeline's steps (``stages/*.sh``), in Python: each script is a thin wrapper over
``python -m dcr_mllm.pipeline STEP``, which parses the step's arguments (flags falling back to the
environment, as the scripts document), launches ``dcr-mllm`` on one process, torchrun or the
DeepSpeed launcher, and leaves freshness to the commands themselves (a finished stage, a current
report or export is kept). ``run-all`` chains them from the configs, read with ``load_config``."""
