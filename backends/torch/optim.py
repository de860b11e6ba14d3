"""Optimizer and LR scheduler built from the run config, torch side."""

from __future__ import annotations

import torch

from backends import base


class TorchStepper(base.Stepper):
    def __init__(self, optimizer, scheduler=None):
        self.optimizer, self.scheduler = optimizer, scheduler

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def build_stepper(model, cfg: dict, total_steps: int, custom=None) -> base.Stepper:
    if custom is not None:
        optimizer, scheduler = custom(model, total_steps)
        return TorchStepper(optimizer, scheduler)
    opt = cfg["optimizer"]
    if opt["name"] != "sgd":
        raise ValueError(f"optimizer '{opt['name']}' is not supported yet")
    return TorchStepper(torch.optim.SGD(model.parameters(), lr=opt["lr"]))
