"""Evaluation, in three rooms by what they measure.

- ``tower``: a vision tower on its own (``eval-tower``: MMVP-VLM, probes, fine-grained pairs, the world's metrics).
- ``mllm``: LLaVA models through lmms-eval (``eval-mllm``, ``report``, the local data and the task hooks).
- ``analysis``: what the numbers mean (the pipeline summary, significance, the seed effect, the premise).

``freshness`` is the one rule, shared by every evaluation stage, for when an output is up to date.
"""
