"""digits: the guide's Step 5 on a real task small enough for a CPU minute. scikit-learn's 8x8
handwritten digits (1,797 images, 10 classes; shipped with the package, nothing downloaded), a
small CNN with BatchNorm and dropout, AdamW with decay on the weights only (not on BatchNorm or
biases), a linear warmup then a linear decay, and each side's own DataLoader (the train one
shuffles): trained for [train] epochs on both sides at once by `reprod-harness run`.

The paddle side is a correct port. Set DIGITS_BUG to put one of Step 5's classic mistakes into it
(the README lists them): label_smoothing, bn_momentum, warmup, decay_norms, dropout, normalize. Set
DIGITS_ORDER=own and paddle's train loader shuffles by itself, in an order the harness cannot share
(an IterableDataset): the two runs see different batches, as ports with their own samplers do.
"""

import os

import numpy as np
import paddle
import torch

BUG = os.environ.get("DIGITS_BUG", "")
BUGS = ("label_smoothing", "bn_momentum", "warmup", "decay_norms", "dropout", "normalize")
if BUG not in ("", *BUGS):
    raise ValueError(f"DIGITS_BUG={BUG!r}: expected one of {', '.join(BUGS)}")
OWN_ORDER = os.environ.get("DIGITS_ORDER", "") == "own"

# the last 700 of a fixed shuffle of the 1,797 images evaluate (one prediction is 0.14 % of them, within
# the guide's 0.15 %), the other 1,097 train
EVAL_SIZE = 700
BATCH, EVAL_BATCH = 32, 140
LR, WEIGHT_DECAY, WARMUP, DROPOUT = 5e-3, 0.05, 10, 0.1


def digits(split: str) -> tuple:
    """(images as N x 1 x 8 x 8 float32 in [0, 1], labels int64): the same arrays on both sides."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    chosen = order[:-EVAL_SIZE] if split == "train" else order[-EVAL_SIZE:]
    images = (data.images[chosen] / 16.0).astype(np.float32)[:, None]
    return images, data.target[chosen].astype(np.int64)


# ---------------------------------------------------------------- torch (the reference)
class TorchDigits(torch.utils.data.Dataset):
    def __init__(self, split):
        self.images, self.labels = digits(split)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), int(self.labels[i])


def data_torch(split):
    return torch.utils.data.DataLoader(TorchDigits(split), batch_size=BATCH if split == "train" else EVAL_BATCH,
                                       shuffle=split == "train", drop_last=split == "train")


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.pool = torch.nn.MaxPool2d(2)
        self.drop = torch.nn.Dropout(DROPOUT)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = self.drop(torch.flatten(x, 1))
        return self.fc2(torch.relu(self.fc1(x)))


def build_torch():
    return TorchNet()


def loss_torch(logits, batch):
    return torch.nn.functional.cross_entropy(logits, batch["label"])


def schedule(step: int, total: int, warmup: int) -> float:
    """The lr factor of a step: linear warmup from 0, then linear decay to 0 at the last step."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def optimizer_torch(model, total_steps):
    decay = [p for n, p in model.named_parameters() if not n.startswith("bn") and not n.endswith("bias")]
    kept = [p for n, p in model.named_parameters() if n.startswith("bn") or n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": kept, "weight_decay": 0.0}],
                            lr=LR)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, total_steps, WARMUP))


# ---------------------------------------------------------------- paddle (the port)
class PaddleDigits(paddle.io.Dataset):
    def __init__(self, split):
        self.images, self.labels = digits(split)
        if BUG == "normalize":  # a transform's Normalize(mean=0.5, std=0.5) the reference does not have
            self.images = (self.images - 0.5) / 0.5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class PaddleShuffled(paddle.io.IterableDataset):
    """DIGITS_ORDER=own: the train items in an order numpy draws, which only this side knows."""

    def __init__(self, split):
        self.data = PaddleDigits(split)

    def __iter__(self):
        for i in np.random.permutation(len(self.data)):
            yield self.data[i]


def data_paddle(split):
    size = BATCH if split == "train" else EVAL_BATCH
    if OWN_ORDER and split == "train":
        return paddle.io.DataLoader(PaddleShuffled(split), batch_size=size, drop_last=True)
    return paddle.io.DataLoader(PaddleDigits(split), batch_size=size, shuffle=split == "train",
                                drop_last=split == "train")


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        momentum = 0.1 if BUG == "bn_momentum" else 0.9  # paddle's momentum weighs the old value: torch's 0.1
        self.conv1 = paddle.nn.Conv2D(1, 16, 3, padding=1)
        self.bn1 = paddle.nn.BatchNorm2D(16, momentum=momentum)
        self.conv2 = paddle.nn.Conv2D(16, 32, 3, padding=1)
        self.bn2 = paddle.nn.BatchNorm2D(32, momentum=momentum)
        self.pool = paddle.nn.MaxPool2D(2)
        self.drop = paddle.nn.Dropout() if BUG == "dropout" else paddle.nn.Dropout(DROPOUT)  # paddle's default p is 0.5
        self.fc1 = paddle.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = paddle.nn.Linear(64, 10)

    def forward(self, x):
        x = paddle.nn.functional.relu(self.bn1(self.conv1(x)))
        x = self.pool(paddle.nn.functional.relu(self.bn2(self.conv2(x))))
        x = self.drop(paddle.flatten(x, 1))
        return self.fc2(paddle.nn.functional.relu(self.fc1(x)))


def build_paddle():
    return PaddleNet()


def loss_paddle(logits, batch):
    smoothing = 0.1 if BUG == "label_smoothing" else 0.0
    return paddle.nn.functional.cross_entropy(logits, batch["label"], label_smoothing=smoothing)


def optimizer_paddle(model, total_steps):
    warmup = 2 * WARMUP if BUG == "warmup" else WARMUP
    decayed = {p.name for n, p in model.named_parameters()
               if BUG == "decay_norms" or not n.startswith("bn") and not n.endswith("bias")}
    lr = paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.PolynomialDecay(LR, max(1, total_steps - warmup), 0.0),
                                          warmup, 0.0, LR)
    opt = paddle.optimizer.AdamW(learning_rate=lr, parameters=model.parameters(), weight_decay=WEIGHT_DECAY,
                                 apply_decay_param_fun=lambda name: name in decayed)
    return opt, lr
