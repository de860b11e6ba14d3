"""init_check, matched: the same port with torch's initializers set explicitly on the paddle side
(the guide's initializer table: kaiming_uniform(a=√5) -> KaimingUniform(negative_slope=√5,
nonlinearity="leaky_relu"), torch's uniform bias -> Uniform(-1/√fan_in, 1/√fan_in), normal_(0, 1)
-> Normal(0, 1)). The init check finds both sides drawn from the same distributions: aligned.
"""

import paddle
from pair import PaddleTextCNN, build_torch, make_batch, torch_like  # noqa: F401 (the pair's functions)

INIT = {"embedding": lambda fan_in: (paddle.nn.initializer.Normal(0.0, 1.0), None),
        "conv": torch_like, "linear": torch_like}


def build_paddle():
    return PaddleTextCNN(INIT)
