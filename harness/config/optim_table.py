"""One description of every optimizer, regularizer, clip and LR schedule family, framework-free.

Both backends build their native objects from these tables (backends/*/optim.py look up the
class names here), and the README's mapping table is generated from them
(`python -m harness.config.optim_table`), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    paddle: str  # native class and how the config maps onto its arguments
    torch: str
    trap: str = ""


OPTIMIZERS = {
    "sgd": Family("sgd", "paddle.optimizer.SGD(learning_rate)", "torch.optim.SGD(lr)"),
    "momentum": Family(
        "momentum",
        "paddle.optimizer.Momentum(learning_rate, momentum, use_nesterov=nesterov)",
        "torch.optim.SGD(lr, momentum, nesterov=nesterov)",
    ),
    "adam": Family(
        "adam",
        "paddle.optimizer.Adam(learning_rate, beta1, beta2, epsilon=eps)",
        "torch.optim.Adam(lr, betas=(beta1, beta2), eps)",
        "paddle Adam(weight_decay=x) is coupled L2, not AdamW: use name = \"adamw\" for decoupled decay",
    ),
    "adamw": Family(
        "adamw",
        "paddle.optimizer.AdamW(learning_rate, beta1, beta2, epsilon=eps, weight_decay, apply_decay_param_fun)",
        "torch.optim.AdamW(lr, betas=(beta1, beta2), eps, weight_decay) with no_decay in a 0-decay group",
        "apply_decay_param_fun receives param.name (linear_11.w_0), never structured names: the harness translates",
    ),
}

DECAYS = {
    "coupled": Family(
        "coupled",
        "weight_decay=L2Decay(weight_decay) on the decayed param group, 0.0 on the no_decay group",
        "weight_decay=weight_decay on the decayed param group, 0 on the no_decay group",
        "sgd, momentum, adam only",
    ),
    "decoupled": Family(
        "decoupled", "AdamW(weight_decay, apply_decay_param_fun=name in decayed)", "AdamW(weight_decay) per group",
        "adamw only",
    ),
    "l1": Family(
        "l1",
        "weight_decay=L1Decay(weight_decay) on the decayed param group",
        "grad += weight_decay * sign(param) after clipping, before step (torch has no L1 option)",
    ),
}

CLIPS = {
    "grad_clip": Family(
        "grad_clip",
        "grad_clip=nn.ClipGradByGlobalNorm(grad_clip)",
        "nn.utils.clip_grad_norm_(params, grad_clip) before step",
        "both clip before the decay term is added",
    ),
    "clip_value": Family(
        "clip_value",
        "grad_clip=nn.ClipGradByValue(max=clip_value, min=-clip_value)",
        "nn.utils.clip_grad_value_(params, clip_value) before step",
    ),
}

SCHEDULERS = {
    "constant": Family("constant", "learning_rate=lr (float)", "no scheduler"),
    "step": Family("step", "lr.StepDecay(lr, step_size, gamma)", "lr_scheduler.StepLR(step_size, gamma)"),
    "multistep": Family(
        "multistep", "lr.MultiStepDecay(lr, milestones, gamma)", "lr_scheduler.MultiStepLR(milestones, gamma)"
    ),
    "exponential": Family("exponential", "lr.ExponentialDecay(lr, gamma)", "lr_scheduler.ExponentialLR(gamma)"),
    "linear_warmup": Family(
        "linear_warmup",
        "lr.LinearWarmup(lr.PolynomialDecay(lr, total_steps - warmup_steps, end_lr, power=1), warmup_steps, 0, lr)",
        "lr_scheduler.LambdaLR(warmup s/w, then linear to end_lr at total_steps)",
        "torch has no native warmup + linear decay; the lambda is HF's get_linear_schedule_with_warmup",
    ),
    "cosine": Family(
        "cosine", "lr.CosineAnnealingDecay(lr, T_max=total_steps, eta_min=end_lr)",
        "lr_scheduler.CosineAnnealingLR(T_max=total_steps, eta_min=end_lr)",
    ),
    "cosine_warmup": Family(
        "cosine_warmup",
        "num_cycles 0.5: lr.LinearWarmup(lr.CosineAnnealingDecay(lr, total_steps - warmup_steps), warmup_steps, 0, lr); "
        "otherwise lr.LambdaDecay(HF cosine-with-warmup)",
        "lr_scheduler.LambdaLR(HF get_cosine_schedule_with_warmup, num_cycles)",
        "num_cycles 0.5 (half a cosine, ends at 0) vs 1 (back up to lr) is a common mix-up",
    ),
    "polynomial": Family(
        "polynomial",
        "lr.PolynomialDecay(lr, decay_steps=total_steps, end_lr, power)",
        "end_lr 0: lr_scheduler.PolynomialLR(total_iters=total_steps, power); else LambdaLR with end_lr",
        "paddle's PolynomialDecay default end_lr is 1e-4, torch decays to 0: the harness always passes end_lr",
    ),
    "plateau": Family(
        "plateau",
        "lr.ReduceOnPlateau(lr, mode=\"min\", factor=gamma, patience, threshold, cooldown, min_lr), step(loss)",
        "lr_scheduler.ReduceLROnPlateau(mode=\"min\", factor=gamma, patience, threshold, cooldown, min_lr), step(loss)",
        "driven by each step's loss in training; the lr check feeds both the same fixed sequence",
    ),
    "onecycle": Family(
        "onecycle",
        "lr.OneCycleLR(max_lr, total_steps, divide_factor=div_factor, end_learning_rate=max_lr/(div_factor*final_div_factor), phase_pct=pct_start)",
        "lr_scheduler.OneCycleLR(max_lr, total_steps, pct_start, div_factor, final_div_factor)",
        "paddle takes an absolute end_learning_rate (default 1e-4), torch a final_div_factor: the final lr differs unless converted",
    ),
}


def decay_mode(opt: dict) -> str | None:
    """The regularization the config asks for, or None."""
    if not opt["weight_decay"]:
        return None
    mode = opt["decay"]
    if mode == "auto":
        mode = "decoupled" if opt["name"] == "adamw" else "coupled"
    if mode == "decoupled" and opt["name"] != "adamw":
        raise ValueError(f"[optimizer] decay = \"decoupled\" needs name = \"adamw\", not \"{opt['name']}\"")
    if opt["name"] == "adamw" and mode != "decoupled":
        raise ValueError(f"[optimizer] name = \"adamw\" decays decoupled; decay = \"{mode}\" would need \"adam\"")
    return mode


def decays(name: str, no_decay: list) -> bool:
    """no_decay holds substrings of torch's *structured* parameter names (encoder.layers.0.norm1.weight);
    the paddle side passes each parameter's torch name (backends/base.Runner.reference_names)."""
    return not any(s in name for s in no_decay)


DECAY_LABELS = {"coupled": "L2", "decoupled": "decoupled", "l1": "L1"}


def decay_label(mode: str, coeff: float) -> str:
    """How one parameter is decayed, as the report lists it: 'L2 0.0001', 'decoupled 0.01', 'L1 1e-05'."""
    return f"{DECAY_LABELS[mode]} {float(coeff):g}"


# The lr check reads a schedule at most this many steps (its whole length up to there).
MAX_LR_STEPS = 10_000
# The lr check's fixed loss sequence (harness/checks/outputs.py plateau_metrics) lets a plateau
# schedule drop and wait within this many steps.
PLATEAU_STEPS = 16


def schedule_reach(scheduler, depth: int = 0) -> int:
    """The steps a scheduler needs to show every change it is set up to make: past its second
    step-size boundary, its last milestone and its warmup; a plateau schedule through the lr
    check's loss sequence. Read from attributes both frameworks' schedulers carry (torch StepLR /
    paddle StepDecay step_size, MultiStepLR / MultiStepDecay milestones, paddle LinearWarmup
    warmup_steps around its inner schedule, patience); 0 when none is known."""
    if scheduler is None or isinstance(scheduler, (int, float)) or depth > 3:
        return 0
    reach = 0
    size = getattr(scheduler, "step_size", None)
    if isinstance(size, int) and size > 0:
        reach = 2 * size + 1
    milestones = getattr(scheduler, "milestones", None)
    if milestones:
        reach = max(reach, max(int(m) for m in milestones) + 2)
    warmup = getattr(scheduler, "warmup_steps", None)
    if isinstance(warmup, int):
        reach = max(reach, warmup + 2)
    if hasattr(scheduler, "patience"):
        reach = max(reach, PLATEAU_STEPS)
    return max(reach, schedule_reach(getattr(scheduler, "learning_rate", None), depth + 1))


def scheduler_total(sched: dict, iters: int) -> int:
    return int(sched.get("total_steps") or iters)


def warmup_lambda(kind: str, warmup: int, total: int, num_cycles: float, base_lr: float, end_lr: float):
    """Multiplicative factors for the schedules neither framework has natively (HF formulas)."""
    end = end_lr / base_lr

    def linear(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(end, end + (1.0 - end) * (total - step) / max(1, total - warmup))

    def cosine(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))

    def polynomial(step: int, power: float) -> float:
        s = min(step, total)
        return ((1.0 - end) * (1.0 - s / total) ** power + end)

    return {"linear": linear, "cosine": cosine, "polynomial": polynomial}[kind]


def markdown() -> str:
    rows = ["| config | paddle | torch | trap handled |", "|---|---|---|---|"]
    for title, table in (("[optimizer] name", OPTIMIZERS), ("[optimizer] decay", DECAYS),
                         ("[optimizer]", CLIPS), ("[lr_scheduler] name", SCHEDULERS)):
        for fam in table.values():
            rows.append(f"| {title} = `{fam.name}` | `{fam.paddle}` | `{fam.torch}` | {fam.trap} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
