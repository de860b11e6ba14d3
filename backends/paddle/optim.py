"""paddle side of harness.config.optim_table: native optimizer, scheduler, clipping and decay."""

from __future__ import annotations

import re
import warnings

import paddle
from paddle.optimizer import lr as S

from backends.primitives import Stepper
from harness.config.optim_table import decay_label, decay_mode, decays, warmup_lambda


class PaddleStepper(Stepper):
    def __init__(self, optimizer, scheduler=None, names: dict | None = None):
        self.optimizer, self.scheduler = optimizer, scheduler
        # paddle keys its optimizer state by each parameter's generated name (linear_3.w_0), which a
        # rebuild of the model renames: kept by structured name instead
        self.names = dict(names or {})  # generated name -> structured name
        self._fresh_names = False  # a state was loaded: its accumulators are made at the next step

    def lr(self) -> float:
        return float(self.optimizer.get_lr())

    def step(self, metric: float | None = None) -> None:
        if self._fresh_names:  # the loaded accumulators are made now, named as load() keyed them
            with paddle.utils.unique_name.guard():
                self.optimizer.step()
            self._fresh_names = False
        else:
            self.optimizer.step()
        self.advance(metric)

    def advance(self, metric: float | None = None) -> None:
        if isinstance(self.scheduler, S.ReduceOnPlateau):
            if metric is not None:  # a traced step has no metric: both sides then skip it alike
                self.scheduler.step(metric)
        elif self.scheduler is not None:
            self.scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.clear_grad(set_to_zero=False)

    def state(self) -> dict:
        state = {}
        for key, value in self.optimizer.state_dict().items():
            if key == "LR_Scheduler" or not isinstance(value, paddle.Tensor):
                state[key] = value
                continue
            owner = max((n for n in self.names if key.startswith(n + "_")), key=len, default=None)
            # "<param name>_moment1_<n>": n counts the accumulators of that name the process made
            state[f"{self.names[owner]}/{re.sub(r'_[0-9]+$', '', key[len(owner) + 1:])}" if owner else key] = value
        return {"optimizer": state, "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load(self, state: dict, moments: bool = True) -> None:
        if not moments:  # the schedule's place only: paddle asks for every accumulator once it has any
            lr = getattr(self.optimizer, "_learning_rate", None)
            kept = state["optimizer"].get("LR_Scheduler")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
                if isinstance(lr, S.LRScheduler) and kept is not None:
                    lr.set_state_dict(kept)
                if self.scheduler is not None and self.scheduler is not lr and state.get("scheduler") is not None:
                    self.scheduler.set_state_dict(state["scheduler"])
            return
        generated = {structured: name for name, structured in self.names.items()}
        wide = paddle.get_default_dtype()  # a float64 rebuild keeps its accumulators in float64
        restored = {}
        for key, value in state["optimizer"].items():
            structured, _, accumulator = key.rpartition("/")
            if structured in generated:  # made under a fresh name generator (step): index 0
                key = f"{generated[structured]}_{accumulator}_0"
            if hasattr(value, "dtype") and value.dtype.kind == "f":
                value = value.astype(wide)
            restored[key] = value
        with warnings.catch_warnings():  # LinearWarmup warns of its own nested scheduler's entry (paddle 3.3)
            warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
            self.optimizer.set_state_dict(restored)
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.set_state_dict(state["scheduler"])
        self._fresh_names = True


def _scheduler(sched: dict, lr: float, total: int):
    name, end = sched["name"], sched["end_lr"]
    warm = sched["warmup_steps"]
    if name == "constant":
        return None
    if name == "step":
        return S.StepDecay(lr, step_size=sched["step_size"], gamma=sched["gamma"])
    if name == "multistep":
        return S.MultiStepDecay(lr, milestones=list(sched["milestones"]), gamma=sched["gamma"])
    if name == "exponential":
        return S.ExponentialDecay(lr, gamma=sched["gamma"])
    if name == "cosine":
        return S.CosineAnnealingDecay(lr, T_max=total, eta_min=end)
    if name == "polynomial":
        return S.PolynomialDecay(lr, decay_steps=total, end_lr=end, power=sched["power"])  # end_lr always given
    if name == "linear_warmup":
        decay = S.PolynomialDecay(lr, decay_steps=max(1, total - warm), end_lr=end, power=1.0)
        return S.LinearWarmup(decay, warmup_steps=warm, start_lr=0.0, end_lr=lr) if warm else decay
    if name == "cosine_warmup":
        if sched["num_cycles"] == 0.5 and not end:
            decay = S.CosineAnnealingDecay(lr, T_max=max(1, total - warm))
            return S.LinearWarmup(decay, warmup_steps=warm, start_lr=0.0, end_lr=lr) if warm else decay
        return S.LambdaDecay(lr, warmup_lambda("cosine", warm, total, sched["num_cycles"], lr, end))
    if name == "plateau":
        return S.ReduceOnPlateau(lr, mode="min", factor=sched["gamma"], patience=sched["patience"],
                                 threshold=sched["threshold"], cooldown=sched["cooldown"], min_lr=sched["min_lr"])
    if name == "onecycle":
        max_lr = sched["max_lr"] or lr
        return S.OneCycleLR(
            max_lr, total, divide_factor=sched["div_factor"],
            end_learning_rate=max_lr / (sched["div_factor"] * sched["final_div_factor"]),
            phase_pct=sched["pct_start"], anneal_strategy="cos",
        )
    raise ValueError(f"unknown lr scheduler '{name}'")


def build_stepper(model, cfg: dict, total_steps: int, custom=None, names: dict | None = None) -> Stepper:
    """names: this side's parameter name -> torch's (through the weight pairing): `no_decay` is
    matched against torch's structured names, so both sides decay the same parameters."""
    generated = {p.name: n for n, p in model.named_parameters()}
    if custom is not None:
        optimizer, scheduler = custom(model, total_steps)
        stepper = PaddleStepper(optimizer, scheduler, generated)
        stepper.decay = optimizer_decay(optimizer, model)
        return stepper
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]
    mode = decay_mode(opt)
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    chosen = {n for n, _ in named if decays((names or {}).get(n, n), opt["no_decay"])}
    scheduler = _scheduler(sched, opt["lr"], total_steps)
    lr = scheduler if scheduler is not None else opt["lr"]
    clip = None
    if opt["grad_clip"] and opt["clip_value"]:
        raise ValueError("[optimizer] grad_clip and clip_value together: paddle takes one grad_clip")
    if opt["grad_clip"]:
        clip = paddle.nn.ClipGradByGlobalNorm(opt["grad_clip"])
    elif opt["clip_value"]:
        clip = paddle.nn.ClipGradByValue(max=opt["clip_value"], min=-opt["clip_value"])
    # Per-parameter regularizers, not param groups: paddle clips each param group by its own
    # global norm (measured: two groups clipped to 0.05 each = 0.071 overall), torch clips all.
    # Set on every build: a regularizer left on a parameter by an earlier build would still apply.
    reg = {"coupled": paddle.regularizer.L2Decay, "l1": paddle.regularizer.L1Decay}.get(mode)
    for n, p in named:
        p.regularizer = reg(opt["weight_decay"]) if reg and n in chosen else None
    params = [p for _, p in named]
    # apply_decay_param_fun is called with param.name (e.g. linear_11.w_0), not structured names
    decay_names = {p.name for n, p in named if n in chosen}
    optimizer = _optimizer(opt, params, decay_names, learning_rate=lr, grad_clip=clip)
    stepper = PaddleStepper(optimizer, scheduler, generated)
    stepper.decay = {n: decay_label(mode, opt["weight_decay"]) for n in chosen} if mode else {}
    return stepper


def _optimizer(opt: dict, params: list, decay_names: set, **common):
    name = opt["name"]
    if name == "adamw":
        return paddle.optimizer.AdamW(
            parameters=params, beta1=opt["beta1"], beta2=opt["beta2"], epsilon=opt["eps"],
            weight_decay=opt["weight_decay"] if decay_mode(opt) else 0.0,
            apply_decay_param_fun=lambda pname: pname in decay_names, **common,
        )
    if name == "sgd":
        return paddle.optimizer.SGD(parameters=params, **common)
    if name == "momentum":
        return paddle.optimizer.Momentum(parameters=params, momentum=opt["momentum"], use_nesterov=opt["nesterov"],
                                         **common)
    if name == "adam":
        return paddle.optimizer.Adam(parameters=params, beta1=opt["beta1"], beta2=opt["beta2"], epsilon=opt["eps"],
                                     **common)
    raise ValueError(f"unknown optimizer '{name}'")


def optimizer_decay(optimizer, model) -> dict | None:
    """What a pair's own optimizer decays: AdamW's weight_decay where apply_decay_param_fun (given
    param.name) allows it; otherwise a parameter's own regularizer, else the optimizer's (Momentum
    keeps an L2 coefficient of its own)."""
    if not isinstance(optimizer, paddle.optimizer.Optimizer):
        return None
    out = {}
    for name, p in model.named_parameters():
        label = _decay_of(optimizer, p)
        if label:
            out[name] = label
    return out


def _decay_of(optimizer, p) -> str | None:
    if isinstance(optimizer, paddle.optimizer.AdamW):
        fun, coeff = optimizer._apply_decay_param_fun, float(optimizer._weight_decay)
        return decay_label("decoupled", coeff) if coeff and (fun is None or fun(p.name)) else None
    for reg in (p.regularizer, optimizer.regularization):
        if isinstance(reg, paddle.regularizer.L2Decay) and reg._coeff:
            return decay_label("coupled", reg._coeff)
        if isinstance(reg, paddle.regularizer.L1Decay) and reg._coeff:
            return decay_label("l1", reg._coeff)
        if reg is not None:
            return None
    if getattr(optimizer, "_regularization_method", "") == "l2_decay" and optimizer._regularization_coeff:
        return decay_label("coupled", optimizer._regularization_coeff)
    return None
