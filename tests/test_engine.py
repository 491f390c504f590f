"""kdzoo.engine's trainer: the order hooks are called in, and SimpleTrainer's step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdzoo.engine import HookBase, NonFiniteLossError, SimpleTrainer, TrainerBase


class Recorder(HookBase):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_train(self) -> None:
        self.calls.append(f"{self.name}.before_train@{self.trainer.iter}")

    def before_step(self) -> None:
        self.calls.append(f"{self.name}.before_step@{self.trainer.iter}")

    def after_step(self) -> None:
        self.calls.append(f"{self.name}.after_step@{self.trainer.iter}")

    def after_train(self) -> None:
        self.calls.append(f"{self.name}.after_train@{self.trainer.iter}")


class Counting(TrainerBase):
    def __init__(self, calls: list[str], fail_at: int | None = None) -> None:
        super().__init__()
        self.calls, self.fail_at = calls, fail_at

    def run_step(self) -> None:
        if self.iter == self.fail_at:
            raise RuntimeError("step failed")
        self.calls.append(f"run_step@{self.iter}")


def test_hooks_run_in_registration_order_around_each_step() -> None:
    calls: list[str] = []
    trainer = Counting(calls)
    trainer.register_hooks([Recorder("a", calls), None, Recorder("b", calls)])  # None: a hook that does not apply
    trainer.train(start_iter=2, max_iter=4)  # a resumed run: steps 2 and 3
    assert calls == [
        "a.before_train@2", "b.before_train@2",
        "a.before_step@2", "b.before_step@2", "run_step@2", "a.after_step@2", "b.after_step@2",
        "a.before_step@3", "b.before_step@3", "run_step@3", "a.after_step@3", "b.after_step@3",
        "a.after_train@4", "b.after_train@4",
    ]


def test_finished_run_calls_only_before_and_after_train() -> None:
    calls: list[str] = []
    trainer = Counting(calls)
    trainer.register_hooks([Recorder("a", calls)])
    trainer.train(start_iter=3, max_iter=3)
    assert calls == ["a.before_train@3", "a.after_train@3"]


def test_failed_step_skips_after_train() -> None:
    """A run that stops writes no final weights or evaluation: after_train is not called."""
    calls: list[str] = []
    trainer = Counting(calls, fail_at=1)
    trainer.register_hooks([Recorder("a", calls)])
    with pytest.raises(RuntimeError, match="step failed"):
        trainer.train(0, 3)
    assert calls[-1] == "a.before_step@1" and not any("after_train" in c for c in calls)


class Toy(nn.Module):
    """``model(images, targets) -> dict of losses``, like a detector or a distiller."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack(images)
        return {"loss_a": (x * self.w).sum(), "loss_b": self.w.square().sum() * targets[0]["scale"]}


def batches(scale: float):
    while True:
        yield [torch.ones(2)], [{"scale": torch.tensor(scale)}]


def test_simple_trainer_steps_and_records_losses() -> None:
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, batches(1.0), opt, torch.amp.GradScaler("cpu", enabled=False), grad_clip=100.0)
    trainer.train(0, 1)
    assert trainer.losses == {"loss_a": 2.0, "loss_b": 2.0, "loss": 4.0}
    assert torch.allclose(model.w.detach(), torch.full((2,), 1 - 0.1 * 3))  # d/dw = 1 + 2w


def test_simple_trainer_stops_before_a_nonfinite_update() -> None:
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, batches(float("nan")), opt, torch.amp.GradScaler("cpu", enabled=False))
    trainer.last_checkpoint = (Path("run/checkpoint.pt"), 4)
    with pytest.raises(NonFiniteLossError, match=r"iteration 5 \(loss_a=2, loss_b=nan\).*run/checkpoint.pt \(iteration 4\)"):
        trainer.train(4, 6)
    assert torch.equal(model.w.detach(), torch.ones(2))


def test_step_stats_are_logged_beside_the_losses_not_summed(tmp_path: Path) -> None:
    """A distiller's ``step_stats`` (TADF's kept shares) reach metrics.jsonl as window means over the
    steps that reported a finite value; the total loss does not include them."""
    import json

    from kdzoo.engine.hooks import LRScheduler, MetricsLog, MetricsWriter
    from kdzoo.recipe import ScheduleCfg

    class WithStats(Toy):
        values = iter([0.25, float("nan"), 0.75, 1.0])

        def forward(self, images, targets):
            self.step_stats = {"kept_cls": next(self.values)}
            return super().forward(images, targets)

    model = WithStats()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    trainer = SimpleTrainer(model, batches(1.0), opt, torch.amp.GradScaler("cpu", enabled=False))
    log = MetricsLog(tmp_path / "metrics.jsonl", None)
    lr = LRScheduler(opt, ScheduleCfg(iters=4, warmup="none"), 0.0, 4)
    trainer.register_hooks([lr, MetricsWriter(log, lr, 3, 4, 1, "toy")])
    trainer.train(0, 4)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["kept_cls"]) for r in records] == [(3, 0.5), (4, 1.0)]
    assert records[0]["loss"] == pytest.approx(4.0) and trainer.stats == {"kept_cls": 1.0}
