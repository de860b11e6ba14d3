"""tiny_transformer: Embedding, LayerNorm, multi-head attention, GELU and a classifier head."""

import math

import numpy as np
import paddle
import torch

VOCAB, SEQ, DIM, HEADS, LAYERS, CLASSES = 100, 16, 32, 4, 2, 2


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(DIM, DIM)
        self.k_proj = torch.nn.Linear(DIM, DIM)
        self.v_proj = torch.nn.Linear(DIM, DIM)
        self.out_proj = torch.nn.Linear(DIM, DIM)

    def forward(self, x):
        b, t, _ = x.shape

        def heads(y):
            return y.reshape(b, t, HEADS, DIM // HEADS).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, t, DIM))


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(DIM)
        self.attn = TorchAttention()
        self.norm2 = torch.nn.LayerNorm(DIM)
        self.fc1 = torch.nn.Linear(DIM, 4 * DIM)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TorchTinyTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(VOCAB, DIM)
        self.pos = torch.nn.Embedding(SEQ, DIM)
        self.blocks = torch.nn.ModuleList([TorchBlock() for _ in range(LAYERS)])
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, CLASSES)

    def forward(self, input_ids):
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class PaddleAttention(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.q_proj = paddle.nn.Linear(DIM, DIM)
        self.k_proj = paddle.nn.Linear(DIM, DIM)
        self.v_proj = paddle.nn.Linear(DIM, DIM)
        self.out_proj = paddle.nn.Linear(DIM, DIM)

    def forward(self, x):
        b, t = x.shape[0], x.shape[1]

        def heads(y):
            return y.reshape([b, t, HEADS, DIM // HEADS]).transpose([0, 2, 1, 3])

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        att = paddle.nn.functional.softmax(paddle.matmul(q, k, transpose_y=True) / math.sqrt(DIM // HEADS), axis=-1)
        return self.out_proj(paddle.matmul(att, v).transpose([0, 2, 1, 3]).reshape([b, t, DIM]))


class PaddleBlock(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.norm1 = paddle.nn.LayerNorm(DIM)
        self.attn = PaddleAttention()
        self.norm2 = paddle.nn.LayerNorm(DIM)
        self.fc1 = paddle.nn.Linear(DIM, 4 * DIM)
        self.act = paddle.nn.GELU()
        self.fc2 = paddle.nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class PaddleTinyTransformer(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.tok = paddle.nn.Embedding(VOCAB, DIM)
        self.pos = paddle.nn.Embedding(SEQ, DIM)
        self.blocks = paddle.nn.LayerList([PaddleBlock() for _ in range(LAYERS)])
        self.norm = paddle.nn.LayerNorm(DIM)
        self.head = paddle.nn.Linear(DIM, CLASSES)

    def forward(self, input_ids):
        x = self.tok(input_ids) + self.pos(paddle.arange(input_ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


def build_torch():
    return TorchTinyTransformer()


def build_paddle():
    return PaddleTinyTransformer()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {
        "input_ids": rng.integers(0, VOCAB, size=(8, SEQ), dtype=np.int64),
        "label": rng.integers(0, CLASSES, size=(8,), dtype=np.int64),
    }
