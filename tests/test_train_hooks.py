"""Training hooks for users' own data: EMA of the student, best checkpoint, early stopping, TensorBoard,
and the recipe keys that turn them on (docs/training.md, "Training hooks")."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn as nn
import yaml

from kdzoo.checkpoint import CHECKPOINT_FILE, kept_checkpoint_name
from kdzoo.data.shapes import generate_shapes
from kdzoo.engine import HookBase, SimpleTrainer, TrainerBase, train
from kdzoo.engine import launch
from kdzoo.engine.hooks import BestCheckpoint, EarlyStopping, EMAHook, EvalHook, MetricsLog
from kdzoo.recipe import BestCfg, EarlyStopCfg, EmaCfg, RecipeError, load_recipe, recipe_from_dict, resume_changes

TINY_KWARGS = {"fpn_channels": 16, "stacked_convs": 1, "frozen_stages": -1, "norm_eval": False}
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical arithmetic in the runs a test compares
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, image_size=96, workers=1)


def tiny(root: Path, out: Path, **top: Any) -> dict[str, Any]:
    """A 16-channel GFL-R18 on 96 px shapes, two iterations per epoch: about half a second per iteration."""
    recipe: dict[str, Any] = {
        "model": {"name": "gfl_r18", "kwargs": dict(TINY_KWARGS)},
        "data": {"root": str(root), "input_size": [96, 96]},
        "schedule": {"iters": 4, "optimizer": "sgd", "lr": 0.01, "warmup_iters": 1, "steps": []},
        "batch_size": 4, "workers": 0, "output_dir": str(out), "checkpoint_interval": 2, "log_interval": 1,
    }
    for key, value in top.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def scripted_metrics(ap: float) -> dict[str, Any]:
    return {**{k: float(ap) for k in HEADLINE}, "per_class": {"circle": float(ap), "star": float("nan")},
            "summary": ""}


class Killed(Exception):
    """Stands for a kill -9 between two iterations (the checkpoint before it is on disk)."""


class KillBefore(HookBase):
    def __init__(self, it: int) -> None:
        self.it = it

    def before_step(self) -> None:
        if self.trainer.iter == self.it:
            raise Killed(f"killed before iteration {self.it + 1}")


def kill_runs_at(monkeypatch: pytest.MonkeyPatch, it: int) -> None:
    """The next train() stops with Killed before the step of 0-based index ``it``."""
    real = launch.default_hooks

    def hooks(*args: Any, **kwargs: Any) -> list[HookBase | None]:
        return [KillBefore(it), *real(*args, **kwargs)]

    monkeypatch.setattr(launch, "default_hooks", hooks)


def script_evaluate(monkeypatch: pytest.MonkeyPatch, aps: list[float]) -> list[int]:
    """Evaluations return the next scripted AP instead of running the model (fast); returns the call log."""
    import kdzoo.evaluation

    calls: list[int] = []

    def evaluate(model: nn.Module, dataset: Any, **kwargs: Any) -> tuple[dict[str, Any], list[Any]]:
        calls.append(1)
        return scripted_metrics(aps[min(len(calls), len(aps)) - 1]), []

    monkeypatch.setattr(kdzoo.evaluation, "evaluate", evaluate)
    return calls


# ----------------------------------------------------------------------------- recipe keys
def test_recipe_keys_default_off_and_validate(shapes: Path, tmp_path: Path) -> None:
    base = tiny(shapes, tmp_path / "run")
    r = recipe_from_dict(base)
    assert (r.ema, r.best, r.early_stop, r.tensorboard) == (None, None, None, False)
    r = recipe_from_dict({**base, "ema": {}, "best": {}, "early_stop": {}, "eval_interval": 2, "tensorboard": True})
    assert r.ema == EmaCfg() and r.ema.decay == 0.9998 and r.ema.warmup and r.ema.buffers
    assert r.best == BestCfg("AP", "max") and r.early_stop == EarlyStopCfg("AP", 3, 0.0, "max")

    bad = {
        "ema.decay must be in \\(0, 1\\), got 1.0": {"ema": {"decay": 1.0}},
        "ema.decay must be in \\(0, 1\\), got 0.0": {"ema": {"decay": 0.0}},
        "ema.min_decay must be in \\[0, ema.decay=0.99\\]": {"ema": {"decay": 0.99, "min_decay": 0.995}},
        "ema.warmup_power must be > 0": {"ema": {"warmup_power": 0}},
        "early_stop.patience must be >= 1": {"early_stop": {"patience": 0}, "eval_interval": 2},
        "early_stop.min_delta must be >= 0": {"early_stop": {"min_delta": -0.1}, "eval_interval": 2},
        "early_stop needs periodic evaluations: set eval_interval > 0": {"early_stop": {"patience": 2}},
        "best.metric: unknown evaluation metric 'ap50'. Did you mean 'AP50'\\?.*Expected one of AP, AP50":
            {"best": {"metric": "ap50"}},
        "early_stop.metric: unknown evaluation metric 'mAP'": {"early_stop": {"metric": "mAP"}, "eval_interval": 2},
        "best.mode: expected one of 'max' \\| 'min', got 'maximum'": {"best": {"mode": "maximum"}},
        "unknown recipe key 'ema.decy'. Did you mean 'decay'": {"ema": {"decy": 0.9}},
    }
    for message, keys in bad.items():
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({**base, **keys})

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    r = load_recipe(path, ["best.metric=AP50", "ema.decay=0.999", "early_stop.patience=2", "eval_interval=1"])
    assert (r.best.metric, r.ema.decay, r.early_stop.patience) == ("AP50", 0.999, 2)


def test_resume_may_change_best_early_stop_and_tensorboard_but_not_ema(shapes: Path, tmp_path: Path) -> None:
    base = tiny(shapes, tmp_path / "run")
    stored = recipe_from_dict(base).to_dict()
    harmless = recipe_from_dict({**base, "best": {"metric": "AP50"}, "early_stop": {"patience": 5},
                                 "eval_interval": 2, "tensorboard": True,
                                 "data": {**base["data"], "cache": True}})
    assert resume_changes(stored, harmless) == []
    changes = resume_changes(stored, recipe_from_dict({**base, "ema": {"decay": 0.99}}))
    assert [k for k, _, _ in changes] == ["ema"]
    with_ema = recipe_from_dict({**base, "ema": {"decay": 0.99}}).to_dict()
    assert [k for k, _, _ in resume_changes(with_ema, recipe_from_dict({**base, "ema": {"decay": 0.999}}))] == ["ema.decay"]
    # A checkpoint written before these keys existed: the defaults (all off) are no change.
    old = {k: v for k, v in stored.items() if k not in ("ema", "best", "early_stop", "tensorboard")}
    assert resume_changes(old, recipe_from_dict(base)) == []


# ----------------------------------------------------------------------------- the trainer's stop request
class Counting(TrainerBase):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def run_step(self) -> None:
        self.calls.append(f"step@{self.iter}")


class StopAt(HookBase):
    def __init__(self, it: int, calls: list[str]) -> None:
        self.it, self.calls = it, calls

    def after_step(self) -> None:
        if self.trainer.iter == self.it:
            self.trainer.request_stop()

    def after_train(self) -> None:
        self.calls.append(f"after_train@{self.trainer.iter}")


def test_request_stop_ends_the_run_after_the_step_and_runs_after_train() -> None:
    calls: list[str] = []
    trainer = Counting(calls)
    trainer.register_hooks([StopAt(1, calls)])
    trainer.train(0, 5)
    assert calls == ["step@0", "step@1", "after_train@2"] and trainer.iter == 2
    calls.clear()
    trainer.train(0, 2)  # a new train() forgets the old request
    assert calls == ["step@0", "step@1", "after_train@2"]


# ----------------------------------------------------------------------------- EMA
class Toy(nn.Module):
    """Two parameters and a float buffer that changes every step (like BatchNorm's statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.b = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack(images)
        self.seen += 1.0
        return {"loss_a": ((x * self.w).sum() + self.b).square(), "loss_b": self.w.square().sum()}


def toy_batches() -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
    g = torch.Generator().manual_seed(0)
    while True:
        yield [torch.rand(2, generator=g)], [{}]


class Snapshots(HookBase):
    def __init__(self, model: nn.Module) -> None:
        self.model, self.states = model, []

    def after_step(self) -> None:
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


@pytest.mark.parametrize("cfg", [EmaCfg(decay=0.8, warmup=True, warmup_gamma=1.0, warmup_power=0.75),
                                 EmaCfg(decay=0.7, warmup=False, buffers=False),
                                 EmaCfg(decay=0.95, warmup=True, warmup_gamma=2.0, warmup_power=1.0, min_decay=0.3)])
def test_ema_follows_the_formula_step_by_step(cfg: EmaCfg) -> None:
    model = Toy()
    trainer = SimpleTrainer(model, toy_batches(), torch.optim.SGD(model.parameters(), lr=0.05),
                            torch.amp.GradScaler("cpu", enabled=False))
    ema, snaps = EMAHook(model, cfg), Snapshots(model)
    trainer.register_hooks([ema, snaps])
    trainer.train(0, 8)
    expected: dict[str, torch.Tensor] = {}
    for step, weights in enumerate(snaps.states, start=1):
        # The decay of the step-th update: 0 on the first (a copy), then warmed up and capped at cfg.decay.
        if step == 1:
            decay = 0.0
        elif cfg.warmup:
            decay = min(cfg.decay, max(cfg.min_decay, 1 - (1 + (step - 1) / cfg.warmup_gamma) ** -cfg.warmup_power))
        else:
            decay = cfg.decay
        for k, w in weights.items():
            averaged = k != "seen" or cfg.buffers
            expected[k] = w.clone() if k not in expected or not averaged else decay * expected[k] + (1 - decay) * w
    got = ema.module.state_dict()
    assert ema.updates == 8 and set(got) == set(expected)
    for k in expected:
        assert torch.allclose(got[k], expected[k], rtol=0, atol=1e-6), (k, got[k], expected[k])
    assert not torch.allclose(got["w"], model.w.detach())  # an average, not the last weights
    assert (float(got["seen"]) == 8.0) == (not cfg.buffers)  # buffers: false copies them


def test_ema_run_resumes_bit_exact_and_is_the_final_model(shapes: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the checkpoint at iteration 2 (where an evaluation also ran) and resumed: the EMA,
    the final weights and the best checkpoint are bit-identical to an uninterrupted run's."""
    ema = {"decay": 0.9, "warmup_power": 0.75}
    ref = tmp_path / "ref"
    train(recipe_from_dict(tiny(shapes, ref, ema=ema, eval_interval=2, best={"metric": "AP"})))
    ckpt = torch.load(ref / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["hooks"]["ema"]["updates"] == 4
    final = load_weights(ref / "model.safetensors")
    averaged = ckpt["hooks"]["ema"]["module"]
    assert set(final) == set(averaged) and all(torch.equal(final[k], averaged[k]) for k in final)
    raw = ckpt["model"]
    assert any(not torch.equal(final[k], raw[k]) for k in final if final[k].is_floating_point())

    out = tmp_path / "killed"
    recipe = tiny(shapes, out, ema=ema, eval_interval=2, best={"metric": "AP"})
    with monkeypatch.context() as m:
        kill_runs_at(m, 2)
        with pytest.raises(Killed):
            train(recipe_from_dict(recipe))
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["iteration"] == 2
    assert not (out / "model.safetensors").exists()
    train(recipe_from_dict(recipe), resume=True)
    got = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert got["hooks"]["ema"]["updates"] == 4
    for k, v in averaged.items():
        assert torch.equal(got["hooks"]["ema"]["module"][k], v), k
    resumed = load_weights(out / "model.safetensors")
    assert all(torch.equal(resumed[k], final[k]) for k in final)
    assert got["hooks"]["best"] == ckpt["hooks"]["best"]
    assert json.loads((out / "best.json").read_text()) == json.loads((ref / "best.json").read_text())
    assert [r for r in records(out) if "AP" in r] == [r for r in records(ref) if "AP" in r]
    losses = [[{k: v for k, v in r.items() if k.startswith("loss")} for r in records(run) if "loss" in r]
              for run in (ref, out)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


# ----------------------------------------------------------------------------- best checkpoint
def scripted_toy_run(tmp_path: Path, aps: list[float], max_iter: int, *, best: BestCfg | None = None,
                     early_stop: EarlyStopCfg | None = None
                     ) -> tuple[SimpleTrainer, EvalHook, list[dict[str, torch.Tensor]], Toy]:
    """A toy trainer evaluated after every step by a scripted evaluation; the weights at each evaluation are kept."""
    model = Toy()
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate() -> tuple[dict[str, Any], list[Any]]:
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scripted_metrics(aps[len(seen) - 1]), []

    trainer = SimpleTrainer(model, toy_batches(), torch.optim.SGD(model.parameters(), lr=0.05),
                            torch.amp.GradScaler("cpu", enabled=False))
    log = MetricsLog(tmp_path / "metrics.jsonl", None)
    evals = EvalHook(evaluate, log, 1, tmp_path, keep_results=early_stop is not None)
    hooks: list[HookBase] = [evals]
    if best is not None:
        hooks.append(BestCheckpoint(evals, best, model.state_dict, tmp_path))
    if early_stop is not None:
        hooks.append(EarlyStopping(evals, early_stop, log))
    trainer.register_hooks(hooks)
    trainer.train(0, max_iter)
    return trainer, evals, seen, model


def test_best_checkpoint_follows_a_scripted_metric_sequence(tmp_path: Path) -> None:
    trainer, evals, seen, _ = scripted_toy_run(tmp_path, [1, 3, 2, 5, 4], 5, best=BestCfg("AP", "max"))
    assert len(seen) == 5  # four periodic evaluations and the final one
    assert json.loads((tmp_path / "best.json").read_text()) == {"iter": 4, "metric": "AP", "value": 5.0}
    best = load_weights(tmp_path / "best.safetensors")
    assert set(best) == set(seen[3]) and all(torch.equal(best[k], seen[3][k]) for k in best)
    assert not torch.equal(best["w"], seen[4]["w"])
    hook = next(h for h in trainer.hooks if isinstance(h, BestCheckpoint))
    assert hook.state_dict() == {"metric": "AP", "mode": "max", "value": 5.0, "iter": 4}

    # mode: min, and a non-finite value (pycocotools' undefined) never counts as the best
    sub = tmp_path / "min"
    sub.mkdir()
    scripted_toy_run(sub, [2, float("nan"), 1, 3, 4], 5, best=BestCfg("AP", "min"))
    assert json.loads((sub / "best.json").read_text()) == {"iter": 3, "metric": "AP", "value": 1.0}

    # The final evaluation can be the best one.
    sub = tmp_path / "last"
    sub.mkdir()
    _, _, seen, model = scripted_toy_run(sub, [1, 2, 6], 3, best=BestCfg("AP50", "max"))
    assert json.loads((sub / "best.json").read_text())["iter"] == 3
    assert torch.equal(load_weights(sub / "best.safetensors")["w"], model.w.detach())


def test_best_checkpoint_resumes_its_state(tmp_path: Path) -> None:
    model = Toy()
    evals = EvalHook(lambda: (scripted_metrics(2.0), []), MetricsLog(tmp_path / "m.jsonl", None), 1, tmp_path)
    hook = BestCheckpoint(evals, BestCfg("AP", "max"), model.state_dict, tmp_path)
    hook.load_state_dict({"metric": "AP", "mode": "max", "value": 3.0, "iter": 7})
    trainer = SimpleTrainer(model, toy_batches(), torch.optim.SGD(model.parameters(), lr=0.05),
                            torch.amp.GradScaler("cpu", enabled=False))
    trainer.register_hooks([evals, hook])
    trainer.train(7, 9)  # AP 2 twice: below the resumed best, nothing written
    assert not (tmp_path / "best.json").exists() and (hook.value, hook.iter) == (3.0, 7)
    hook.load_state_dict({"metric": "AP50", "mode": "max", "value": 9.0, "iter": 1})  # another metric: tracked anew
    assert (hook.value, hook.iter) == (3.0, 7)


# ----------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_at_the_right_evaluation(tmp_path: Path) -> None:
    # patience 2, min_delta 0.5: 1 (best), 3 (best), 3.4 (+0.4: no), 2 (no) -> stop after the 4th evaluation
    trainer, evals, seen, model = scripted_toy_run(tmp_path, [1, 3, 3.4, 2, 9, 9], 10,
                                                   early_stop=EarlyStopCfg("AP", patience=2, min_delta=0.5))
    assert trainer.iter == 4 and len(seen) == 4  # the final evaluation is the 4th, not run again
    stop = next(h for h in trainer.hooks if isinstance(h, EarlyStopping))
    assert stop.state_dict() == {"metric": "AP", "mode": "max", "best": 3.0, "best_iter": 2, "bad": 2, "stopped_at": 4}
    recs = records(tmp_path)
    assert recs[-1] == {"iter": 4, "early_stop": {"metric": "AP", "best": 3.0, "best_iter": 2,
                                                  "evaluations_without_improvement": 2, "patience": 2, "min_delta": 0.5}}
    assert [r["iter"] for r in recs if "AP" in r] == [1, 2, 3, 4]
    final = json.loads((tmp_path / "eval.json").read_text())
    assert final["iter"] == 4 and final["AP"] == 2.0 and evals.final["AP"] == 2.0

    # mode: min with no stop before the schedule ends: the final evaluation is run and not counted
    sub = tmp_path / "min"
    sub.mkdir()
    trainer, _, seen, _ = scripted_toy_run(sub, [5, 4, 3, 3, 9], 5, early_stop=EarlyStopCfg("AP", patience=2, mode="min"))
    assert trainer.iter == 5 and len(seen) == 5 and not any("early_stop" in r for r in records(sub))


def test_early_stopped_run_resumes_as_complete(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    calls = script_evaluate(monkeypatch, [1, 2, 2, 2, 2])
    recipe = tiny(shapes, out, schedule={"iters": 8}, eval_interval=1, checkpoint_interval=3, log_interval=3,
                  early_stop={"patience": 2}, best={})
    train(recipe_from_dict(recipe))
    assert len(calls) == 4  # evaluations at 1, 2, 3, 4; the stop at 4 makes the 4th the final one
    err = capsys.readouterr().err
    assert f"run directory: {out.resolve()} (metrics.jsonl, checkpoint.pt)" in err
    assert "early stopping at iteration 4/8: AP has not improved by more than 0.0 in 2 evaluations" in err
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["hooks"]["early_stop"]["stopped_at"] == 4
    recs = records(out)
    assert [r["iter"] for r in recs if "loss" in r] == [3, 4]  # the last, partial logging window too
    assert {"iter": 4, "early_stop": {"metric": "AP", "best": 2.0, "best_iter": 2, "evaluations_without_improvement": 2,
                                      "patience": 2, "min_delta": 0.0}} in recs
    assert json.loads((out / "eval.json").read_text())["iter"] == 4
    assert json.loads((out / "best.json").read_text()) == {"iter": 2, "metric": "AP", "value": 2.0}
    assert (out / "model.safetensors").is_file()

    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", CHECKPOINT_FILE, "model.safetensors")}
    metrics = train(recipe_from_dict(recipe), resume=True)
    assert metrics["iter"] == 4 and len(calls) == 4
    assert "is complete (stopped early at iteration 4 of 8 (early_stop))" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before

    # Without early stopping the resumed run trains on to the end of its schedule.
    train(recipe_from_dict({**recipe, "early_stop": None}), resume=True)
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["iteration"] == 8
    assert json.loads((out / "eval.json").read_text())["iter"] == 8


# ----------------------------------------------------------------------------- kept checkpoints
def test_keep_checkpoints_keeps_a_copy_that_later_checkpoints_and_a_resume_leave_alone(
        shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    script_evaluate(monkeypatch, [1.0])
    # Off the checkpoint period (4): iteration 3 is written because it is kept, then killed before 5.
    recipe = tiny(shapes, out, schedule={"iters": 6}, checkpoint_interval=4, keep_checkpoints=[3, 6])
    kill_runs_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(recipe_from_dict(recipe))
    kept3 = out / kept_checkpoint_name(3)
    assert kept_checkpoint_name(3) == "checkpoint_iter3.pt"
    assert torch.load(kept3, weights_only=True)["iteration"] == 3
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["iteration"] == 4  # the period's, after it
    assert sorted(p.name for p in out.glob("*.pt")) == [CHECKPOINT_FILE, "checkpoint_iter3.pt"]
    first = kept3.read_bytes()

    monkeypatch.undo()
    script_evaluate(monkeypatch, [1.0])
    train(recipe_from_dict(recipe), resume=True)
    assert kept3.read_bytes() == first  # untouched by the checkpoints after it
    final = torch.load(out / kept_checkpoint_name(6), weights_only=True)
    assert final["iteration"] == 6
    assert (out / kept_checkpoint_name(6)).read_bytes() == (out / CHECKPOINT_FILE).read_bytes()
    assert not list(out.glob(".*.tmp"))

    # Killed between a kept checkpoint's save and its copy: the resume, which starts from that
    # checkpoint, makes the copy. Iterations already behind the resume point are reported as lost.
    run2 = tmp_path / "run2"
    recipe2 = tiny(shapes, run2, schedule={"iters": 6}, checkpoint_interval=0, keep_checkpoints=[3])
    kill_runs_at(monkeypatch, 3)
    with pytest.raises(Killed):
        train(recipe_from_dict(recipe2))
    (run2 / kept_checkpoint_name(3)).unlink()
    ckpt3 = (run2 / CHECKPOINT_FILE).read_bytes()
    kill_runs_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train(recipe_from_dict(recipe2), resume=True)
    assert (run2 / kept_checkpoint_name(3)).read_bytes() == ckpt3
    capsys.readouterr()
    monkeypatch.undo()
    script_evaluate(monkeypatch, [1.0])
    train(recipe_from_dict({**recipe2, "keep_checkpoints": [2, 3]}), resume=True)
    assert "warning: keep_checkpoints [2]: the run is already at iteration 3" in capsys.readouterr().err
    assert not (run2 / kept_checkpoint_name(2)).exists()


def test_keep_checkpoints_validates_and_may_change_on_resume(shapes: Path, tmp_path: Path) -> None:
    base = tiny(shapes, tmp_path / "run", schedule={"iters": 6})
    assert recipe_from_dict(base).keep_checkpoints == []
    for value, message in (([0], "keep_checkpoints must be increasing positive iterations, got \\[0\\]"),
                           ([4, 2], "got \\[4, 2\\]"), ([2, 2], "got \\[2, 2\\]"),
                           ([7], "keep_checkpoints: iteration 7 is past the end of the schedule \\(schedule.iters=6\\)")):
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({**base, "keep_checkpoints": value})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load_recipe(path, ["keep_checkpoints=[2,5]"]).keep_checkpoints == [2, 5]
    stored = recipe_from_dict(base).to_dict()
    assert resume_changes(stored, recipe_from_dict({**base, "keep_checkpoints": [3]})) == []
    old = {k: v for k, v in stored.items() if k != "keep_checkpoints"}  # a checkpoint from before the key
    assert resume_changes(old, recipe_from_dict({**base, "keep_checkpoints": [3]})) == []
    # With epochs the end is known once the data are: 8 images, batch 4, 2 epochs = 4 iterations.
    by_epochs = tiny(shapes, tmp_path / "ep", schedule={"iters": None, "epochs": 2}, keep_checkpoints=[5])
    with pytest.raises(RecipeError, match="keep_checkpoints: iteration 5 is past the end of the schedule "
                                          "\\(2 epochs of 2 iterations = 4\\)"):
        train(recipe_from_dict(by_epochs))
    assert not (tmp_path / "ep").exists()


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_scalars_and_purge_on_resume(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script_evaluate(monkeypatch, [10.0, 20.0, 30.0])
    out = tmp_path / "run"
    recipe = tiny(shapes, out, eval_interval=2, tensorboard=True)
    with monkeypatch.context() as m:
        kill_runs_at(m, 3)  # iterations 1-3 are logged, the checkpoint is at 2
        with pytest.raises(Killed):
            train(recipe_from_dict(recipe))
    train(recipe_from_dict(recipe), resume=True)

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_cls", "train/loss_bbox", "train/loss_dfl", "train/lr", "train/images_per_s",
            "eval/AP", "eval/AP50", "AP_per_class/circle"} <= tags
    assert "AP_per_class/star" not in tags  # NaN: not a scalar
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in tags}
    assert steps["train/loss"] == [1, 2, 3, 4]  # iteration 3 of the killed run purged, written once by the resumed one
    assert steps["eval/AP"] == [2, 4] and [e.value for e in acc.Scalars("eval/AP")] == [10.0, 20.0]
    logged = {r["iter"]: r for r in records(out) if "loss" in r}
    for e in acc.Scalars("train/loss_bbox"):
        assert e.value == pytest.approx(logged[e.step]["loss_bbox"], rel=1e-5)


def test_tensorboard_missing_fails_at_start(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    out = tmp_path / "run"
    with pytest.raises(ImportError, match=r"tensorboard: true needs the tensorboard package.*pip install kdzoo\[tensorboard\]"):
        train(recipe_from_dict(tiny(shapes, out, tensorboard=True)))
    assert not out.exists()
