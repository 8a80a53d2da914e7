"""Models: they define the vector field F and nothing else."""

from .config import BLOCKS, ModelConfig
from .lm import EquilibriumLM, LMField

__all__ = ["BLOCKS", "EquilibriumLM", "LMField", "ModelConfig"]
