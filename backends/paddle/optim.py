"""Optimizer and LR scheduler built from the run config, paddle side."""

from __future__ import annotations

import paddle

from backends import base


class PaddleStepper(base.Stepper):
    def __init__(self, optimizer, scheduler=None):
        self.optimizer, self.scheduler = optimizer, scheduler

    def lr(self) -> float:
        return float(self.optimizer.get_lr())

    def step(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.clear_grad(set_to_zero=False)


def build_stepper(model, cfg: dict, total_steps: int, custom=None) -> base.Stepper:
    if custom is not None:
        optimizer, scheduler = custom(model, total_steps)
        return PaddleStepper(optimizer, scheduler)
    opt = cfg["optimizer"]
    if opt["name"] != "sgd":
        raise ValueError(f"optimizer '{opt['name']}' is not supported yet")
    return PaddleStepper(paddle.optimizer.SGD(learning_rate=opt["lr"], parameters=model.parameters()))
