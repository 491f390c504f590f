"""Recipe -> the parts of a run: datasets, student, teacher, distiller, optimizer, data stream.
Whether the run distills is decided here, once (:class:`RunParts`)."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import CHECKPOINT_FILE, CheckpointError, check_fits
from ..data.classes import check_class_order
from ..data.coco import CocoDetection, check_images, collate_fn
from ..distributed import is_distributed, rank, world_size
from ..recipe import RESUME_SAFE_KEYS, Recipe, RecipeError, ScheduleCfg, format_value, resume_changes

__all__ = ["RunParts", "WeightsUnavailableError", "build_run", "build_datasets", "build_student", "build_teacher",
           "build_optimizer", "scaled_lr", "iters_per_epoch", "train_batches", "device", "init_distributed",
           "ensure_data", "check_resume"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights the recipe asks for cannot be loaded (no network, no cache)."""


@dataclasses.dataclass
class RunParts:
    """What a recipe builds. ``model`` is what is trained and checkpointed: the distiller when there
    is one (student + adapters; its forward adds the distillation losses), else the student."""

    train_ds: CocoDetection
    val_ds: CocoDetection
    student: nn.Module
    teacher: nn.Module | None
    distiller: nn.Module | None
    optimizer: torch.optim.Optimizer
    base_lr: float

    @property
    def model(self) -> nn.Module:
        return self.distiller if self.distiller is not None else self.student

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The plain student's weights (a distiller's adapters excluded)."""
        return self.distiller.student_state_dict() if self.distiller is not None else self.student.state_dict()


def build_run(recipe: Recipe, device: torch.device) -> RunParts:
    train_ds, val_ds = build_datasets(recipe)
    torch.manual_seed(recipe.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    student = build_student(recipe, train_ds)
    teacher = distiller = None
    if recipe.distill is not None:
        from ..distill import build_distiller

        teacher = build_teacher(recipe, train_ds.num_classes, train_ds.categories)
        distiller = build_distiller(recipe.distill.method, student, teacher, **recipe.distill.options)
    model = distiller if distiller is not None else student
    model.to(device).train()
    base_lr = scaled_lr(recipe)
    return RunParts(train_ds, val_ds, student, teacher, distiller, build_optimizer(model, recipe.schedule, base_lr),
                    base_lr)


def build_datasets(recipe: Recipe) -> tuple[CocoDetection, CocoDetection]:
    d = recipe.data
    if d.format == "coco":
        train_ds = CocoDetection(d.path("train_images"), d.path("train_ann"), train=True, flip_prob=d.flip,
                                 filter_empty=d.filter_empty)
        val_ds = CocoDetection(d.path("val_images"), d.path("val_ann"), train=False)
        train_key, train_src, val_key = "data.train_ann", str(d.path("train_ann")), "data.val_ann"
    else:  # yolo / voc, read into COCO dicts (docs/datasets.md)
        from ..data.convert import read_dataset
        from ..data.voc import voc_classes

        classes = d.classes
        if d.format == "voc" and classes is None:  # one class list for both splits
            classes = voc_classes(d.root, [d.train_split, d.val_split])
        tr = read_dataset(d.format, d.root, d.train_split, classes=classes)
        va = read_dataset(d.format, d.root, d.val_split, classes=classes)
        train_ds = CocoDetection(tr.images_dir, tr.coco, train=True, flip_prob=d.flip, filter_empty=d.filter_empty,
                                 source=tr.source)
        val_ds = CocoDetection(va.images_dir, va.coco, train=False, source=va.source)
        train_key, train_src, val_key = "data.train_split", tr.source, "data.val_split"
    if len(train_ds) == 0:
        raise RecipeError(f"{train_key}: {train_src} has no training image with a usable box")
    if val_ds.categories != train_ds.categories:
        raise RecipeError(f"{val_key}: categories {val_ds.categories} differ from the training ones {train_ds.categories}")
    check_images(train_ds, val_ds)  # every image file reads: a bad one stops the run here, not midway
    if d.cache:  # before any DataLoader forks its workers, so that they share the decoded images
        train_ds.cache_images()
        val_ds.cache_images()
    return train_ds, val_ds


def build_student(recipe: Recipe, train_ds: CocoDetection) -> nn.Module:
    from .. import create_detector

    m, d = recipe.model, recipe.data
    kwargs = dict(m.kwargs)
    given = kwargs.setdefault("num_classes", train_ds.num_classes)
    if given != train_ds.num_classes:
        raise RecipeError(f"model.kwargs.num_classes is {given} but the training annotations have "
                          f"{train_ds.num_classes} categories ({', '.join(train_ds.categories[:10])} ...)")
    if d.input_size is not None:
        kwargs["input_size"] = tuple(d.input_size)
    if d.train_sizes is not None:
        kwargs["train_sizes"] = [tuple(s) for s in d.train_sizes]
    # The dataset's classes are stamped on the model's config after the build: weights trained for
    # another class count (a COCO zoo detector fine-tuned on the user's classes) then load with a
    # fresh classifier (kdzoo.pretrained.load_pretrained), and everything else strictly.
    overlay = {"num_classes": train_ds.num_classes, "categories": tuple(train_ds.categories),
               "category_ids": tuple(train_ds.label_to_cat_id)}
    try:
        model = create_detector(m.name, pretrained=m.pretrained, **kwargs)
        model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, **overlay)
        return model
    except (OSError, RuntimeError) as e:
        if kwargs.get("backbone_pretrained") or m.pretrained:
            raise WeightsUnavailableError(
                f"model {m.name!r}: could not load pretrained weights ({type(e).__name__}: {e}). "
                "The Hugging Face Hub is probably unreachable and the weights are not in the local cache; "
                "download them where there is network (they are cached under HF_HOME), or train from scratch "
                "with model.kwargs.backbone_pretrained=false. Set HF_HUB_OFFLINE=1 to fail at once instead of retrying."
            ) from e
        raise


def build_teacher(recipe: Recipe, num_classes: int, categories: Sequence[str] = ()) -> nn.Module:
    """The frozen teacher from ``teacher``: a finished run directory, a bare weights file for
    ``teacher.name`` (a run's ``checkpoint.pt`` too: its weights at that iteration), or the registered
    weights of ``teacher.name``."""
    from .. import create_detector
    from ..hub import CONFIG_NAME, WEIGHTS_NAME
    from ..pretrained import read_weights_file

    t = recipe.teacher
    assert t is not None
    ckpt = Path(t.checkpoint) if t.checkpoint else None
    if ckpt is not None and ckpt.is_dir():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (ckpt / name).is_file():
                raise FileNotFoundError(f"teacher.checkpoint: {ckpt} is not a finished kdzoo run directory: {name} "
                                        f"is missing (expected {CONFIG_NAME} + {WEIGHTS_NAME}, written at the end of kdzoo.train; to distil "
                                        f"from a run part-way through, set teacher.checkpoint to its {CHECKPOINT_FILE} (or a "
                                        "checkpoint_iter{N}.pt it kept, recipe key keep_checkpoints) and "
                                        "teacher.name to its architecture)")
        teacher = create_detector(f"local-dir:{ckpt}", pretrained=False, **t.kwargs)
        if t.name and teacher.arch_name != t.name.partition(".")[0]:
            raise RecipeError(f"teacher.name is {t.name!r} but the run directory {ckpt} holds a {teacher.arch_name!r}")
        weights = ckpt / WEIGHTS_NAME
        try:
            state = read_weights_file(weights)
        except ValueError as e:
            raise CheckpointError(f"teacher checkpoint {weights} (teacher.checkpoint) cannot be read: {e}. "
                                  "Retrain or restore the teacher run.") from e
        check_fits(teacher, state, f"the teacher checkpoint {weights} (teacher.checkpoint)",
                   f"the teacher is built from {ckpt / CONFIG_NAME}, a {teacher.arch_name!r}")
        teacher.load_state_dict(state)
    elif ckpt is not None:  # a bare weights file: its head is assumed to be the dataset's size unless told
        kwargs = dict(t.kwargs)
        kwargs.setdefault("num_classes", num_classes)
        try:  # the file's class count is the teacher's: loaded strictly, never with a fresh classifier
            teacher = create_detector(t.name, pretrained=True, **kwargs,
                                      pretrained_cfg_overlay={"file": str(ckpt), "num_classes": kwargs["num_classes"]})
        except (RuntimeError, ValueError) as e:
            # load_pretrained's message names the architecture but neither the file nor its role.
            raise CheckpointError(f"the teacher checkpoint {ckpt} (teacher.checkpoint) does not load into "
                                  f"teacher.name {t.name!r}: {e}") from e
    else:  # the registered weights, strictly (a teacher.kwargs.num_classes unlike theirs is an error)
        overlay = {"num_classes": t.kwargs["num_classes"]} if "num_classes" in t.kwargs else None
        teacher = create_detector(t.name, pretrained=True, pretrained_cfg_overlay=overlay, **t.kwargs)
    if teacher.num_classes != num_classes:
        raise RecipeError(f"the teacher predicts {teacher.num_classes} classes but the dataset has {num_classes}")
    try:
        check_class_order(teacher.pretrained_cfg.categories, categories, f"the teacher ({t.checkpoint or t.name})",
                          f"the training data ({recipe.data.root})")
    except ValueError as e:
        raise RecipeError(str(e)) from None
    return teacher


def build_optimizer(model: nn.Module, s: ScheduleCfg, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; biases get MMDetection's ``bias_lr_mult`` /
    ``bias_decay_mult`` (FCOS trains biases at 2x lr without decay)."""
    groups: dict[bool, list[nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[name.endswith(".bias")].append(p)
    params = [
        {"params": ps, "lr": lr * (s.bias_lr_mult if is_bias else 1.0),
         "weight_decay": s.weight_decay * (s.bias_decay_mult if is_bias else 1.0)}
        for is_bias, ps in sorted(groups.items())
    ]
    if not params:
        raise ValueError("the model has no trainable parameters (check frozen_stages / freeze_norm)")
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=(s.momentum, 0.999), weight_decay=s.weight_decay)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def scaled_lr(recipe: Recipe) -> float:
    """``schedule.lr``, scaled linearly to the total batch when ``schedule.base_batch_size`` is set."""
    s = recipe.schedule
    return s.lr * (recipe.batch_size * world_size() / s.base_batch_size if s.base_batch_size else 1.0)


# --------------------------------------------------------------------------- data
def iters_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n / world_size()) / batch_size)


def _epoch_batches(n: int, recipe: Recipe, epoch: int, skip: int) -> list[list[int]]:
    """This rank's batches for ``epoch`` (DistributedSampler's shuffle, seeded by the recipe's
    seed and the epoch), minus the first ``skip`` that were trained before a resume."""
    sampler = DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=recipe.seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    bs = recipe.batch_size
    return [idx[i:i + bs] for i in range(0, len(idx), bs)][skip:]


def train_batches(train_ds: CocoDetection, recipe: Recipe, start_iter: int,
                  device: torch.device) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
    """Batches on ``device`` from iteration ``start_iter`` on, epoch after epoch: one batch list per
    epoch, so a resumed run skips exactly the batches already trained."""
    ipe = iters_per_epoch(len(train_ds), recipe.batch_size)
    it = start_iter
    while True:
        epoch, skip = divmod(it, ipe)
        loader = DataLoader(train_ds, batch_sampler=_epoch_batches(len(train_ds), recipe, epoch, skip),
                            num_workers=recipe.workers, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch * 101 + rank()))
        for images, targets in loader:
            it += 1
            yield ([im.to(device, non_blocking=True) for im in images],
                   [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets])


# --------------------------------------------------------------------------- the process and the run directory
def device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RecipeError("device: 'cuda' was asked for but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))


def ensure_data(recipe: Recipe) -> None:
    """Generate the recipe's shapes dataset where it asks for one (rank 0), then check the paths."""
    if recipe.data.shapes is not None:
        if rank() == 0:
            from ..data.shapes import ensure_shapes

            ensure_shapes(recipe.data.root, **dataclasses.asdict(recipe.data.shapes))
        if is_distributed():
            dist.barrier()
    recipe.check_paths()


def check_resume(recipe: Recipe, state: dict[str, Any], ckpt_path: Path) -> None:
    """Refuse to resume ``ckpt_path`` with a recipe that changes the run it belongs to."""
    stored, origin = state.get("recipe"), ""
    if not isinstance(stored, dict):  # written before checkpoints carried their recipe
        saved = ckpt_path.parent / "recipe.yaml"
        try:
            stored, origin = yaml.safe_load(saved.read_text()), f" (as recorded in {saved})"
        except (OSError, yaml.YAMLError):
            stored = None
    if not isinstance(stored, dict):
        if rank() == 0:
            print(f"warning: neither {ckpt_path} nor recipe.yaml next to it records the run's recipe; "
                  "the resumed recipe cannot be checked against it", file=sys.stderr)
        return
    changes = resume_changes(stored, recipe)
    if changes:
        lines = "\n".join(f"  {key}: {format_value(old)} -> {format_value(new)}" for key, old, new in changes)
        raise RecipeError(
            f"--resume: the recipe changes the run that {ckpt_path} belongs to{origin}:\n{lines}\n"
            f"Resume with the recorded values, or start a new run in another output_dir. Only "
            f"{', '.join(sorted(RESUME_SAFE_KEYS))} may change on resume.")
