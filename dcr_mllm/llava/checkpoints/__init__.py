"""Checkpoint surgery: read LLaVA checkpoints in each format, swap a tower in, convert original LLaVA to llava-hf."""
