"""A torch model (model.py) and PaConvert's conversion of it (model_paddle.py), used as it came
out: no torch_to_paddle, no edit. PaConvert writes paddle.compat.nn.Linear, whose weight keeps
torch's [out, in] layout, and its attention projections are square: the harness measures their
layout on the traced forward rather than transposing them as paddle.nn.Linear would need."""

import numpy as np

VOCAB, CLASSES, BATCH, SEQ = 64, 5, 4, 12


def build_torch():
    from model import Classifier

    return Classifier(vocab=VOCAB, classes=CLASSES)


def build_paddle():
    from model_paddle import Classifier

    return Classifier(vocab=VOCAB, classes=CLASSES)


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {"tokens": rng.integers(0, VOCAB, size=(BATCH, SEQ)), "label": rng.integers(0, CLASSES, size=(BATCH,))}
