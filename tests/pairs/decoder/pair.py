"""decoder: torch.nn.TransformerDecoder vs paddle.nn.TransformerDecoder; torch's multihead_attn pairs with
paddle's cross_attn by type and order, each fused in_proj split into q/k/v."""

import numpy as np, paddle, torch
D, H, F = 32, 4, 64
class T(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, batch_first=True), 2)
    def forward(self, tgt, memory):
        return self.dec(tgt, memory)
class P(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.dec = paddle.nn.TransformerDecoder(paddle.nn.TransformerDecoderLayer(D, H, F, dropout=0.0), 2)
    def forward(self, tgt, memory):
        return self.dec(tgt, memory)
def build_torch(): return T()
def build_paddle(): return P()
def make_batch(rng, step):
    return {"tgt": rng.standard_normal((4, 6, D), dtype=np.float32), "memory": rng.standard_normal((4, 8, D), dtype=np.float32),
            "label": rng.standard_normal((4, 6, D), dtype=np.float32)}
