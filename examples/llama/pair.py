"""Hugging Face transformers 5 LlamaForCausalLM vs PaddleFormers LlamaForCausalLM, tiny and built
from a config (nothing downloaded): grouped-query attention (4 heads, 2 key/value heads), rotary
position embeddings, RMSNorm, SwiGLU and an untied lm_head. No torch_to_paddle: the module names
agree, the classes do not (LlamaRMSNorm / RMSNorm), PaddleFormers' projections are [in, out]
while its lm_head keeps torch's [vocab, hidden]; the harness pairs and lays out the weights itself.

Each framework's library is imported inside its own functions: the torch worker never loads
paddleformers, the paddle worker never loads transformers' torch models (see README.md for one
environment per framework)."""

import numpy as np

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, SEQ, BATCH = 128, 32, 64, 2, 4, 2, 16, 4
CONFIG = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
              num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
              rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=0, tie_word_embeddings=False, attention_dropout=0.0)


def build_torch():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="eager"))


def build_paddle():
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    # the fused RMSNorm kernel exists only on GPU
    return LlamaForCausalLM(LlamaConfig(**CONFIG, fuse_rms_norm=False))


def forward_torch(model, batch):
    return model(input_ids=batch["input_ids"], use_cache=False).logits


def forward_paddle(model, batch):
    return model(input_ids=batch["input_ids"], use_cache=False)[0]  # a tuple, logits first


def make_batch(rng: np.random.Generator, step: int) -> dict:
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ + 1))
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}  # next-token prediction
