"""The worker's side of the training run, in process: dropout masks both frameworks draw alike, and an
optimizer's kept state (paddle's keyed by structured names) continuing the same updates in a model
built again, in float32 and in float64."""

import numpy as np
import paddle
import pytest
import torch

from backends.masks import SharedMasks
from backends.paddle import optim as paddle_optim
from backends.paddle.runner import _shared_functional as paddle_functional
from backends.torch import optim as torch_optim
from backends.torch.runner import _shared_functional as torch_functional

CFG = {"optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1, "decay": "auto", "no_decay": ["bias"],
                     "grad_clip": 0.0, "clip_value": 0.0, "momentum": 0.9, "nesterov": False, "beta1": 0.9,
                     "beta2": 0.999, "eps": 1e-8},
       "lr_scheduler": {"name": "linear_warmup", "warmup_steps": 2, "total_steps": None, "step_size": 1,
                        "milestones": [], "gamma": 0.1, "power": 1.0, "end_lr": 0.0, "num_cycles": 0.5,
                        "max_lr": None, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4,
                        "patience": 2, "threshold": 1e-4, "cooldown": 0, "min_lr": 0.0}}
pytestmark = pytest.mark.e2e  # both frameworks in the test process: not the pure layer's seconds

X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def _masks(sites=None) -> SharedMasks:
    masks = SharedMasks(5, sites=sites)
    masks.begin(3)
    return masks


def _functional(fns, name):
    return next(fn for _, n, fn in fns if n == name)


def test_torch_and_paddle_drop_the_same_units_with_each_ones_scaling_and_mode():
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 5)).astype(np.float32)
    t = _functional(torch_functional(_masks()), "dropout")(torch.from_numpy(x), 0.3, True)
    p = _functional(paddle_functional(_masks()), "dropout")(paddle.to_tensor(x), 0.3, training=True)
    np.testing.assert_allclose(t.numpy(), p.numpy(), rtol=1e-6)
    assert 0.2 < float(np.mean(t.numpy() == 0)) < 0.4
    downscaled = _functional(paddle_functional(_masks()), "dropout")(paddle.to_tensor(x), 0.3, mode="downscale_in_infer")
    np.testing.assert_allclose(downscaled.numpy() * np.float32(1 / 0.7), p.numpy(), rtol=1e-5)
    at_eval = _functional(paddle_functional(_masks()), "dropout")(paddle.to_tensor(x), 0.3, training=False,
                                                                  mode="downscale_in_infer")
    np.testing.assert_allclose(at_eval.numpy(), x * 0.7, rtol=1e-6)  # paddle's own inference scaling
    t2 = _functional(torch_functional(_masks()), "dropout2d")(torch.from_numpy(x), 0.5, True)
    p2 = _functional(paddle_functional(_masks()), "dropout2d")(paddle.to_tensor(x), 0.5, True)
    np.testing.assert_allclose(t2.numpy(), p2.numpy(), rtol=1e-6)
    assert all(len(np.unique(t2.numpy()[n, c] == 0)) == 1 for n in range(4) for c in range(3))  # whole channels


def test_kernels_that_draw_their_own_dropout_are_counted_not_shared():
    masks = _masks()
    sdpa = _functional(torch_functional(masks), "scaled_dot_product_attention")
    q = torch.ones(1, 2, 3, 4)
    sdpa(q, q, q, None, 0.0)
    assert masks.unshared == 0
    sdpa(q, q, q, dropout_p=0.1)
    sdpa(q, q, q, None, 0.1)
    assert masks.unshared == 2
    _functional(torch_functional(masks), "alpha_dropout")(q, 0.5)  # training defaults to False there
    assert masks.unshared == 2


def _torch_steps(model, stepper, n):
    for _ in range(n):
        model(torch.from_numpy(X)).square().mean().backward()
        stepper.step()
        stepper.zero_grad()


def test_torch_continues_from_a_kept_optimizer_state_in_a_rebuilt_model():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    sa = torch_optim.build_stepper(a, CFG, 10)
    _torch_steps(a, sa, 3)
    kept = {k: v.detach().numpy().copy() for k, v in a.state_dict().items()}
    state = _plain(sa.state())
    b = torch.nn.Linear(4, 3)
    b.load_state_dict({k: torch.from_numpy(v) for k, v in kept.items()})
    sb = torch_optim.build_stepper(b, CFG, 10)
    sb.load(state)
    assert sb.lr() == sa.lr()
    _torch_steps(a, sa, 2)
    _torch_steps(b, sb, 2)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def _paddle_steps(model, stepper, n):
    for _ in range(n):
        model(paddle.to_tensor(X.astype(str(model.weight.dtype).replace("paddle.", "")))).square().mean().backward()
        stepper.step()
        stepper.zero_grad()


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_paddle_continues_from_a_kept_optimizer_state_keyed_by_structured_names(precision):
    paddle.seed(0)
    a = paddle.nn.Linear(4, 3)
    sa = paddle_optim.build_stepper(a, CFG, 10)
    _paddle_steps(a, sa, 3)
    state = _plain(sa.state())
    assert "weight/moment1" in state["optimizer"]  # by structured name, not a.weight.name (linear_N.w_0)
    kept = {k: v.numpy() for k, v in a.state_dict().items()}
    paddle.set_default_dtype(precision)
    try:
        b = paddle.nn.Linear(4, 3)  # another generated name
        assert b.weight.name != a.weight.name
        b.set_state_dict({k: v.astype(precision) for k, v in kept.items()})
        sb = paddle_optim.build_stepper(b, CFG, 10)
        sb.load(state)
        assert sb.lr() == pytest.approx(sa.lr())
        _paddle_steps(a, sa, 2)
        _paddle_steps(b, sb, 2)
    finally:
        paddle.set_default_dtype("float32")
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v.numpy(), b.state_dict()[k].numpy().astype(np.float32), rtol=1e-5, atol=1e-6)


def _plain(value):
    """As a kept file holds it (backends/primitives.py plain)."""
    if hasattr(value, "numpy"):
        return np.array(value.numpy())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_a_paddle_iterable_dataset_behind_a_loader_is_read_as_batches_without_a_length():
    """paddle's IterableDataset defines __getitem__ and __len__ (both raise): not items by index."""
    from backends.pairdata import _is_map_style, _len

    class Stream(paddle.io.IterableDataset):
        def __iter__(self):
            yield from (np.float32([i]) for i in range(4))

    loader = paddle.io.DataLoader(Stream(), batch_size=2)
    assert not _is_map_style(loader.dataset) and _len(loader.dataset) is None and _len(loader) is None
    assert _is_map_style(paddle.io.TensorDataset([paddle.zeros([3, 2])]))


def test_paddle_continues_from_a_kept_state_with_a_second_optimizer_on_the_same_model():
    """A run begun again in one process (after localization): paddle numbers each accumulator name
    it makes (linear_0.w_0_moment1_1 for the second), which the kept state cannot know."""
    model = paddle.nn.Linear(4, 3)
    first = paddle_optim.build_stepper(model, CFG, 10)
    _paddle_steps(model, first, 2)
    state = _plain(first.state())
    again = paddle_optim.build_stepper(model, CFG, 10)
    again.load(state)
    _paddle_steps(model, again, 1)
    moments = {k: v for k, v in _plain(again.state())["optimizer"].items() if k.endswith("moment1")}
    assert moments and all(np.any(v != 0) for v in moments.values())
