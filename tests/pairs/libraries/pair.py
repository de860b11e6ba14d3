"""HF BERT vs PaddleNLP BERT with every library imported at the top, as real pair modules do: each
process hides the framework it does not hold from these libraries (scipy, datasets, transformers
and PaddleNLP probe for torch) and binds stand-ins only to this module's own names."""

import numpy as np
import paddle  # noqa: F401 - imported at the top on purpose: each process must load this module as it is
import scipy.special
import scipy.stats  # noqa: F401
import torch  # noqa: F401
from paddlenlp.transformers import BertConfig as PaddleBertConfig
from paddlenlp.transformers import BertForSequenceClassification as PaddleBert
from transformers import BertConfig, BertForSequenceClassification

try:
    import paddleformers  # noqa: F401 - when installed
except ModuleNotFoundError:
    paddleformers = None

CONFIG = dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=32, type_vocab_size=2, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, num_labels=2)


def build_torch():
    return BertForSequenceClassification(BertConfig(**CONFIG, hidden_act="gelu"))


def build_paddle():
    return PaddleBert(PaddleBertConfig(**CONFIG, hidden_act="gelu"))


def forward_torch(model, batch):
    return model(input_ids=batch["input_ids"]).logits


def forward_paddle(model, batch):
    return model(input_ids=batch["input_ids"])


def make_batch(rng: np.random.Generator, step: int) -> dict:
    ids = rng.integers(1, CONFIG["vocab_size"], size=(4, 16), dtype=np.int64)
    label = (scipy.special.expit(ids[:, 1] - CONFIG["vocab_size"] / 2) > 0.5).astype(np.int64)  # scipy in the coordinator
    return {"input_ids": ids, "label": label}
