"""transformer_encoder: torch.nn.TransformerEncoder vs paddle.nn.TransformerEncoder, library layers only.

torch fuses the attention's q/k/v projections into in_proj_weight (3E, E); paddle keeps q_proj,
k_proj and v_proj Linears. The automatic mapping splits the fused tensor and transposes each part.
"""

import numpy as np
import paddle
import torch

VOCAB, SEQ, DIM, HEADS, FFN, LAYERS, CLASSES = 200, 24, 64, 4, 128, 2, 3


class TorchEncoderClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        layer = torch.nn.TransformerEncoderLayer(DIM, HEADS, FFN, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = torch.nn.Linear(DIM, CLASSES)

    def forward(self, input_ids):
        return self.head(self.encoder(self.embed(input_ids)).mean(dim=1))


class PaddleEncoderClassifier(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(VOCAB, DIM)
        layer = paddle.nn.TransformerEncoderLayer(DIM, HEADS, FFN, dropout=0.0)
        self.encoder = paddle.nn.TransformerEncoder(layer, LAYERS)
        self.head = paddle.nn.Linear(DIM, CLASSES)

    def forward(self, input_ids):
        return self.head(self.encoder(self.embed(input_ids)).mean(axis=1))


def build_torch():
    return TorchEncoderClassifier()


def build_paddle():
    return PaddleEncoderClassifier()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    ids = rng.integers(0, VOCAB, size=(8, SEQ), dtype=np.int64)
    return {"input_ids": ids, "label": (ids[:, 0] % CLASSES).astype(np.int64)}  # learnable: first token
