"""Training objectives for stage one: DCR (the method) and the ablation baselines."""

from dcr_mllm.objectives.dcr import dcr_loss
from dcr_mllm.objectives.model import EnhanceModel
from dcr_mllm.objectives.settings import ObjectiveConfig, objective_settings

__all__ = ["EnhanceModel", "ObjectiveConfig", "dcr_loss", "objective_settings"]
