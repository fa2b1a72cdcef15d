"""Training objectives for stage one: DCR (the method) and the ablation baselines."""

from dcr_mllm.objectives.dcr import dcr_loss
from dcr_mllm.objectives.model import EnhanceModel, ObjectiveConfig

__all__ = ["EnhanceModel", "ObjectiveConfig", "dcr_loss"]
