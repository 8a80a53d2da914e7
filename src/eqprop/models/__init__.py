"""Models: they define the vector field F and nothing else."""

from .config import BLOCKS, ModelConfig
from .lm import EquilibriumLM, LMField
from .standard import StandardLM, build_model

__all__ = ["BLOCKS", "EquilibriumLM", "LMField", "ModelConfig", "StandardLM", "build_model"]
