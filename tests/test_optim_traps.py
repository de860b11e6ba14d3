"""Each known reproduction trap, made by a user-supplied optimizer_paddle, is caught at the right check."""

import pytest

from conftest import check, cli, report

pytestmark = pytest.mark.e2e  # every test here starts workers

BASE = '''
import math
import numpy as np
import paddle
import torch

from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

LR = 0.05


def optimizer_torch(model, total_steps):
{torch_opt}


def optimizer_paddle(model, total_steps):
{paddle_opt}
'''

TOML = """
[data]
inputs = ["x"]
[train]
iters = 6
[lr_scheduler]
total_steps = 6
"""


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.strip().splitlines())


TRAPS = {
    # PolynomialDecay's end_lr defaults to 1e-4; torch's PolynomialLR decays to 0
    "polynomial_end_lr": ("lr", """
opt = torch.optim.SGD(model.parameters(), lr=LR)
return opt, torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_steps, power=1.0)
""", """
sched = paddle.optimizer.lr.PolynomialDecay(LR, decay_steps=total_steps, power=1.0)
return paddle.optimizer.SGD(learning_rate=sched, parameters=model.parameters()), sched
"""),
    # a paddle scheduler created but not given to the optimizer: paddle keeps the float lr
    "scheduler_not_attached": ("lr", """
opt = torch.optim.SGD(model.parameters(), lr=LR)
return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
""", """
sched = paddle.optimizer.lr.StepDecay(LR, step_size=2, gamma=0.5)
return paddle.optimizer.SGD(learning_rate=LR, parameters=model.parameters()), sched
"""),
    # OneCycle: paddle's absolute end_learning_rate (1e-4) vs torch's final_div_factor
    "onecycle_final_lr": ("lr", """
opt = torch.optim.SGD(model.parameters(), lr=LR)
return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total_steps)
""", """
sched = paddle.optimizer.lr.OneCycleLR(LR, total_steps)
return paddle.optimizer.SGD(learning_rate=sched, parameters=model.parameters()), sched
"""),
    # StepLR(step_size=30) with the decay factor typed differently: it shows at step 30, past [train] iters
    "step_gamma_at_step_30": ("lr", """
opt = torch.optim.SGD(model.parameters(), lr=LR)
return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
""", """
sched = paddle.optimizer.lr.StepDecay(LR, step_size=30, gamma=0.5)
return paddle.optimizer.SGD(learning_rate=sched, parameters=model.parameters()), sched
"""),
    # cosine with warmup: num_cycles 0.5 on one side, 1 on the other
    "cosine_num_cycles": ("lr", """
opt = torch.optim.SGD(model.parameters(), lr=LR)
f = lambda s: s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * 2 * 0.5 * (s - 2) / (total_steps - 2)))
return opt, torch.optim.lr_scheduler.LambdaLR(opt, f)
""", """
f = lambda s: s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * 2 * 1.0 * (s - 2) / (total_steps - 2)))
sched = paddle.optimizer.lr.LambdaDecay(LR, f)
return paddle.optimizer.SGD(learning_rate=sched, parameters=model.parameters()), sched
"""),
    # no_decay compared with structured names inside apply_decay_param_fun: decays everything
    "no_decay_structured_names": ("backward", """
decay = [p for n, p in model.named_parameters() if "bias" not in n]
keep = [p for n, p in model.named_parameters() if "bias" in n]
return torch.optim.AdamW([{"params": decay, "weight_decay": 0.5}, {"params": keep, "weight_decay": 0.0}], lr=LR), None
""", """
fn = lambda name: "bias" not in name  # receives linear_3.b_0, never "fc1.bias"
return paddle.optimizer.AdamW(learning_rate=LR, parameters=model.parameters(), weight_decay=0.5,
                              apply_decay_param_fun=fn), None
"""),
    # paddle Adam(weight_decay) is coupled L2; torch AdamW is decoupled
    "adam_coupled_vs_adamw": ("backward", """
return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1), None
""", """
return paddle.optimizer.Adam(learning_rate=LR, parameters=model.parameters(), weight_decay=0.1), None
"""),
}


@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_trap_is_caught_at_the_right_check(trap, make_pair, tmp_path):
    where, torch_opt, paddle_opt = TRAPS[trap]
    toml = make_pair(BASE.format(torch_opt=_indent(torch_opt), paddle_opt=_indent(paddle_opt)), TOML, name=trap)
    out = tmp_path / "out"
    proc = cli("run", toml, "--out", out, "--checks", "forward,loss,lr,backward")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(out)
    failed = [c["name"] for c in rep["checks"] if not c["passed"]]
    assert check(rep, "forward")["passed"] and check(rep, "loss")["passed"]
    assert failed[0] == where, failed
    assert rep["first_divergence"]["check"] == where
    if where == "lr":
        assert (out / "scheduler_diff.log").read_text().rstrip().endswith("diff check failed")


def test_the_correct_versions_are_aligned(make_pair, tmp_path):
    """The same pairs written correctly pass: the traps above fail for their bug, nothing else."""
    torch_opt = """
opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if "bias" not in n], "weight_decay": 0.5},
                         {"params": [p for n, p in model.named_parameters() if "bias" in n], "weight_decay": 0.0}], lr=LR)
return opt, torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_steps, power=1.0)
"""
    paddle_opt = """
names = {p.name for n, p in model.named_parameters() if "bias" not in n}
sched = paddle.optimizer.lr.PolynomialDecay(LR, decay_steps=total_steps, power=1.0, end_lr=0.0)
return paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters(), weight_decay=0.5,
                              apply_decay_param_fun=lambda n: n in names), sched
"""
    toml = make_pair(BASE.format(torch_opt=_indent(torch_opt), paddle_opt=_indent(paddle_opt)), TOML, name="correct")
    proc = cli("run", toml, "--out", tmp_path / "out", "--checks", "forward,loss,lr,backward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
