"""Training: config, trainer, checkpoints, metrics, plots, evaluation and sampling.

The package is also its main function: ``eqprop.train(cfg)`` is :func:`eqprop.train.run.train`
(the import system binds ``eqprop.train`` to this package, so the top-level ``train`` is the
package, made callable).
"""

import sys
import types

from .checkpoint import load_checkpoint, save_checkpoint
from .config import EvalConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig
from .configio import config_from_dict, config_to_dict, load_config_file, save_config
from .decisions import Decision
from .distributed import DistContext, init_distributed, is_main_process
from .evaluation import evaluate
from .generation import Generation, generate
from .hooks import Hook
from .loaded import LoadedRun, load_run, resume_config
from .run import train
from .trainer import Penalty, Tracker, Trainer, TrainSummary

__all__ = ["Decision", "DistContext", "EvalConfig", "Generation", "Hook", "LoadedRun",
           "OptimConfig", "Penalty", "RunConfig", "ScheduleConfig", "Tracker", "TrainConfig",
           "TrainSummary", "Trainer",
           "config_from_dict", "config_to_dict", "evaluate", "generate", "init_distributed",
           "is_main_process", "load_checkpoint", "load_config_file", "load_run",
           "resume_config", "save_checkpoint", "save_config", "train"]


class _TrainPackage(types.ModuleType):
    """The type of this package: calling it calls :func:`~eqprop.train.run.train`."""

    __call__ = staticmethod(train)


sys.modules[__name__].__class__ = _TrainPackage
