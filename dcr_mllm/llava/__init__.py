"""Stage two, in two rooms: ``train`` (LLaVA-1.5 pretraining and instruction tuning with any tower) and
``checkpoints`` (surgery on existing LLaVA checkpoints: swap a tower in, convert formats). Both build on
``build`` (assembling a llava-hf model) and ``shards`` (streaming safetensors).
"""
