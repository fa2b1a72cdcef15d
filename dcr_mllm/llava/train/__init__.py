"""Stage two training: LLaVA-1.5 projector pretraining and instruction tuning with any tower, and its export."""
