"""The training engine (detectron2-style): :func:`train` builds a run from a recipe (:mod:`.build`)
and a :class:`SimpleTrainer` runs its steps while hooks (:mod:`.hooks`) schedule the lr, log,
checkpoint, evaluate and save the final weights. The command line is :mod:`kdzoo.train`."""
from ..checkpoint import CHECKPOINT_FILE, CheckpointError
from .build import RunParts, WeightsUnavailableError, build_optimizer, build_run, build_student, build_teacher
from .hooks import lr_factor
from .launch import METRICS_FILE, default_hooks, train
from .trainer import HookBase, NonFiniteLossError, SimpleTrainer, TrainerBase

__all__ = ["train", "default_hooks", "TrainerBase", "SimpleTrainer", "HookBase", "RunParts", "build_run", "build_student",
           "build_teacher", "build_optimizer", "lr_factor", "NonFiniteLossError", "WeightsUnavailableError",
           "CheckpointError", "CHECKPOINT_FILE", "METRICS_FILE"]
