"""Training: config, loop, checkpoints, metrics, plots, evaluation and sampling."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import EvalConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig
from .configio import config_from_dict, config_to_dict, load_config_file, save_config
from .distributed import DistContext, init_distributed, is_main_process
from .evaluation import evaluate
from .generation import Generation, generate
from .loaded import LoadedRun, load_run, resume_config
from .loop import Penalty, Tracker, Trainer, TrainSummary
from .run import train

__all__ = ["DistContext", "EvalConfig", "Generation", "LoadedRun", "OptimConfig", "Penalty",
           "RunConfig", "ScheduleConfig", "Tracker", "TrainConfig", "TrainSummary", "Trainer",
           "config_from_dict", "config_to_dict", "evaluate", "generate", "init_distributed",
           "is_main_process", "load_checkpoint", "load_config_file", "load_run",
           "resume_config", "save_checkpoint", "save_config", "train"]
