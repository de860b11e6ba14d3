"""torch side of harness.config.optim_table: native optimizer, scheduler, clipping and decay."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler as S

from backends.primitives import Stepper
from harness.config.optim_table import decay_label, decay_mode, decays, warmup_lambda


class TorchStepper(Stepper):
    def __init__(self, optimizer, scheduler=None, params=(), clip_norm=0.0, clip_value=0.0, l1=(0.0, ())):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.params, self.clip_norm, self.clip_value = list(params), clip_norm, clip_value
        self.l1_coeff, self.l1_params = l1[0], list(l1[1])

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, metric: float | None = None) -> None:
        # paddle clips inside step(), then adds the regularization term: same order here
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        if self.clip_value:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value)
        if self.l1_coeff:
            with torch.no_grad():
                for p in self.l1_params:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=self.l1_coeff)
        self.optimizer.step()
        self._schedule(metric)

    def advance(self, metric: float | None = None) -> None:
        self.optimizer.step()  # no gradients: updates nothing, keeps torch's step-order check happy
        self._schedule(metric)

    def _schedule(self, metric: float | None) -> None:
        if isinstance(self.scheduler, S.ReduceLROnPlateau):
            if metric is not None:  # a traced step has no metric: both sides then skip it alike
                self.scheduler.step(metric)
        elif self.scheduler is not None:
            self.scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load(self, state: dict, moments: bool = True) -> None:
        # the optimizer casts each state tensor to its parameter's dtype and device (a float64 rebuild too)
        self.optimizer.load_state_dict(_tensors(state["optimizer"]))
        if not moments:
            self.optimizer.state.clear()
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def _tensors(value):
    """A kept optimizer state back as torch's: arrays as tensors, everything else as it is."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors(v) for v in value]
    return value


def _optimizer(opt: dict, groups: list):
    name, lr = opt["name"], opt["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=opt["momentum"], nesterov=opt["nesterov"])
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"], weight_decay=0.0)
    raise ValueError(f"unknown optimizer '{name}'")


def _scheduler(optimizer, sched: dict, lr: float, total: int):
    name = sched["name"]
    if name == "constant":
        return None
    if name == "step":
        return S.StepLR(optimizer, step_size=sched["step_size"], gamma=sched["gamma"])
    if name == "multistep":
        return S.MultiStepLR(optimizer, milestones=list(sched["milestones"]), gamma=sched["gamma"])
    if name == "exponential":
        return S.ExponentialLR(optimizer, gamma=sched["gamma"])
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total, eta_min=sched["end_lr"])
    if name == "polynomial" and not sched["end_lr"]:
        return S.PolynomialLR(optimizer, total_iters=total, power=sched["power"])
    if name == "plateau":
        return S.ReduceLROnPlateau(optimizer, mode="min", factor=sched["gamma"], patience=sched["patience"],
                                   threshold=sched["threshold"], cooldown=sched["cooldown"], min_lr=sched["min_lr"])
    if name == "onecycle":
        return S.OneCycleLR(
            optimizer, max_lr=sched["max_lr"] or lr, total_steps=total, pct_start=sched["pct_start"],
            div_factor=sched["div_factor"], final_div_factor=sched["final_div_factor"], anneal_strategy="cos",
        )
    kind = {"linear_warmup": "linear", "cosine_warmup": "cosine", "polynomial": "polynomial"}.get(name)
    if kind is None:
        raise ValueError(f"unknown lr scheduler '{name}'")
    fn = warmup_lambda(kind, sched["warmup_steps"], total, sched["num_cycles"], lr, sched["end_lr"])
    if kind == "polynomial":
        power = sched["power"]
        return S.LambdaLR(optimizer, lambda s: fn(s, power))
    return S.LambdaLR(optimizer, fn)


def build_stepper(model, cfg: dict, total_steps: int, custom=None, names: dict | None = None) -> Stepper:
    """names: this side's parameter name -> torch's (identity here: these are torch's)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]
    if custom is not None:
        optimizer, scheduler = custom(model, total_steps)
        stepper = TorchStepper(optimizer, scheduler)
        stepper.decay = optimizer_decay(optimizer, model)
        return stepper
    mode = decay_mode(opt)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    chosen = {n for n, _ in named if decays((names or {}).get(n, n), opt["no_decay"])}
    decayed = [p for n, p in named if n in chosen]
    kept = [p for n, p in named if n not in chosen]
    wd = opt["weight_decay"] if mode in ("coupled", "decoupled") else 0.0
    groups = [g for g in ({"params": decayed, "weight_decay": wd}, {"params": kept, "weight_decay": 0.0}) if g["params"]]
    optimizer = _optimizer(opt, groups)
    scheduler = _scheduler(optimizer, sched, opt["lr"], total_steps)
    l1 = (opt["weight_decay"], decayed) if mode == "l1" else (0.0, ())
    stepper = TorchStepper(optimizer, scheduler, params, opt["grad_clip"], opt["clip_value"], l1)
    stepper.decay = {n: decay_label(mode, opt["weight_decay"]) for n in chosen} if mode else {}
    return stepper


def optimizer_decay(optimizer, model) -> dict | None:
    """What a pair's own optimizer decays, read from its parameter groups: AdamW-type classes
    (torch's, transformers') decay decoupled, the others add weight_decay x p to the gradient."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    decoupled = "AdamW" in type(optimizer).__name__
    out = {}
    for group in groups:
        coeff = float(group.get("weight_decay", 0.0) or 0.0)
        mode = "decoupled" if decoupled or group.get("decoupled_weight_decay") else "coupled"
        out.update({names[id(p)]: decay_label(mode, coeff) for p in group.get("params", []) if coeff and id(p) in names})
    return out
