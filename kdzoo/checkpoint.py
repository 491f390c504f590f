"""Files that must never be left half-written: :func:`atomic_write`, and the training checkpoint.

``checkpoint.pt`` holds the trainable model's weights (a distiller's student and adapters; the
frozen teacher is rebuilt from its own source), the optimizer, the lr schedule's position, the
GradScaler, the iteration, every rank's RNG state, the resolved recipe and, when the recipe turns
them on, the state of the stateful hooks (EMA weights, best metric so far, early stopping).

Only the standard library and torch at import: kdzoo.hub and kdzoo.recipe build on this module.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

__all__ = ["atomic_write", "current_umask", "CHECKPOINT_FILE", "kept_checkpoint_name", "CheckpointError", "rng_state", "set_rng_state",
           "model_state", "save_checkpoint", "read_checkpoint", "load_checkpoint", "is_training_checkpoint",
           "checkpoint_weights", "fits", "check_fits"]

CHECKPOINT_FILE = "checkpoint.pt"


def kept_checkpoint_name(iteration: int) -> str:
    """The file a run keeps its checkpoint of ``iteration`` in (recipe key ``keep_checkpoints``)."""
    return f"checkpoint_iter{iteration}.pt"


_REQUIRED = ("model", "optimizer", "iteration", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint (the run's own, or the teacher's) cannot be read or does not fit the model."""


def current_umask() -> int:
    """The process umask (``os.umask`` can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file in ``path``'s directory, fsync it, give it the mode the
    umask gives, rename it over ``path`` and fsync the directory. A crash at any moment leaves the
    old file or the new one, never a truncated one; on an exception the temporary file is removed
    and ``path`` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # the rename itself survives a power loss once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # Kept as tensors/ints so the checkpoint loads with weights_only=True.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- weights
def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable side's weights: a distiller's frozen teacher is rebuilt from its own source."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


def fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape) for k in own)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str, built_from: str) -> None:
    """A CheckpointError naming ``source`` (the file and whose checkpoint it is) with the missing,
    unexpected and mis-shaped keys, unless ``state`` loads into ``model`` exactly."""
    if fits(model, state):
        return
    from .pretrained import load_state_dict_checked  # kdzoo.pretrained imports kdzoo.hub, which imports this

    try:
        load_state_dict_checked(model, state, source=source)
    except RuntimeError as e:
        raise CheckpointError(f"{e}\n  ({built_from}; was the file written by another architecture or width?)") from None
    raise AssertionError("unreachable: the state was checked not to fit")


# --------------------------------------------------------------------------- checkpoint.pt
def save_checkpoint(path: Path, *, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: dict[str, Any], scaler: torch.amp.GradScaler, rngs: list[Any],
                    recipe: dict[str, Any], hooks: dict[str, Any] | None = None) -> None:
    """Write ``path`` atomically; ``rngs`` holds every rank's :func:`rng_state`. ``hooks``: the
    state of the stateful training hooks by name (``ema``, ``best``, ``early_stop``; tensors and
    plain values only), stored under ``"hooks"`` when there is any."""
    state = {"iteration": iteration, "model": model_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler, "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rngs,
             "world_size": len(rngs), "recipe": recipe}
    if hooks:
        state["hooks"] = hooks
    atomic_write(path, lambda p: torch.save(state, p))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The run's checkpoint, or a CheckpointError naming the file and what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # readable, but it holds objects a weights-only load refuses
        raise CheckpointError(
            f"{path} is not a checkpoint kdzoo.train can resume from: a weights-only load refuses it "
            f"({_first_sentence(e)}). Restore the run's own checkpoint, or delete it to restart the run "
            "from iteration 0.") from None
    except Exception as e:  # zip, pickle and EOF errors come in many types
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be resumed from ({type(e).__name__}: {_first_sentence(e)}). "
            f"Restore it from a copy, or delete it to restart the run from iteration 0 (run again with --resume).") from e
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a kdzoo.train checkpoint (no {', '.join(missing)}); restore the run's "
                              "checkpoint or delete it to restart the run from iteration 0")
    return state


def load_checkpoint(state: dict[str, Any], path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rank: int, world_size: int) -> int:
    """Load what :func:`read_checkpoint` returned into the run; returns the iteration to continue at."""
    weights = {k: v for k, v in state["model"].items() if not k.startswith("teacher.")}
    check_fits(model, weights, f"the student checkpoint {path}", "the model is built from model.name and model.kwargs")
    model.load_state_dict(weights, strict=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in the student checkpoint {path} does not fit the model's "
                              f"parameters ({e}); restore the run's checkpoint or delete it to restart") from e
    rngs = state["rng"]
    set_rng_state(rngs[rank] if len(rngs) == world_size else rngs[0])
    return int(state["iteration"])


def is_training_checkpoint(state: Any) -> bool:
    """Whether ``state`` (a loaded file) is a ``checkpoint.pt`` that kdzoo.train wrote."""
    return isinstance(state, dict) and all(k in state for k in _REQUIRED) and isinstance(state["model"], dict)


def checkpoint_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain detector's weights a training checkpoint holds: what the run's ``model.safetensors``
    would hold had it ended at that iteration. With the EMA hook on, the averaged student (the one the
    run evaluates and saves); otherwise the trained model, a distiller's student without its adapters."""
    ema = (state.get("hooks") or {}).get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        return dict(ema["module"])
    weights = state["model"]
    if any(k.startswith("student.") for k in weights):  # a distiller: a detector has no ``student`` module
        return {k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")}
    return dict(weights)


def _first_sentence(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text.split(". ")[0].rstrip(".") or type(error).__name__
