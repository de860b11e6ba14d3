"""BERT-base-sized TransformerEncoder classifier (vocab 30522, d 768, 12 layers, 12 heads, FFN 3072,
batch 8 x 32 tokens, dropout 0), torch vs paddle, mapped automatically: the scale benchmark's pair
where transformers/paddlenlp are not installed."""
import numpy as np

VOCAB, D, HEADS, FF, LAYERS, SEQ, BATCH, CLASSES = 30522, 768, 12, 3072, 12, 32, 8, 2


def build_torch():
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = nn.Linear(D, CLASSES)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    return Net()


def build_paddle():
    import paddle.nn as nn

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, LAYERS)
            self.head = nn.Linear(D, CLASSES)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    return Net()


def make_batch(rng, step):
    return {"x": rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int64"),
            "label": rng.integers(0, CLASSES, (BATCH,)).astype("int64")}
