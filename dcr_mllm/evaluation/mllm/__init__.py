"""The MLLM measured through lmms-eval: runs, reports, the local benchmark data and the task hooks."""
