# Written by PaConvert 3.3.1 from model.py (`paconvert -i model.py -o model_paddle.py`), not edited
# since: the harness checks it as it came out. It runs on paddlepaddle 3.3.1.
import paddle

"""A small pre-norm transformer block classifier in plain torch: the input of PaConvert
(model_paddle.py is its output)."""
import math


class Attention(paddle.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = paddle.compat.nn.Linear(dim, dim)
        self.k = paddle.compat.nn.Linear(dim, dim)
        self.v = paddle.compat.nn.Linear(dim, dim)
        self.proj = paddle.compat.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, t, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, t, h, d // h).transpose(1, 2)
        scores = paddle.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // h)
        weights = paddle.compat.nn.functional.softmax(scores, dim=-1)
        out = paddle.matmul(weights, v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Block(paddle.nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = paddle.nn.LayerNorm(dim, eps=1e-05)
        self.attn = Attention(dim, heads)
        self.norm2 = paddle.nn.LayerNorm(dim, eps=1e-05)
        self.fc1 = paddle.compat.nn.Linear(dim, hidden)
        self.fc2 = paddle.compat.nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(paddle.nn.functional.gelu(self.fc1(self.norm2(x))))


class Classifier(paddle.nn.Module):
    def __init__(self, vocab=64, dim=32, heads=4, hidden=64, layers=2, classes=5):
        super().__init__()
        self.embed = paddle.nn.Embedding(vocab, dim)
        self.blocks = paddle.nn.ModuleList(
            [Block(dim, heads, hidden) for _ in range(layers)]
        )
        self.norm = paddle.nn.LayerNorm(dim)
        self.head = paddle.compat.nn.Linear(dim, classes)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
