"""HF BertForSequenceClassification vs PaddleNLP's, the small config of examples/bert_sst2, for
pairs that inject one bug each (gelu.py, scale.py): the localization tests name where they part."""

import numpy as np

CONFIG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, num_labels=2)
SEQ, BATCH = 32, 8


def hf_bert(**config):
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**{**CONFIG, "hidden_act": "gelu", **config}))


def paddlenlp_bert(**config):
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**{**CONFIG, "hidden_act": "gelu", **config}))


def forward_torch(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]).logits


def forward_paddle(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])


def make_batch(rng: np.random.Generator, step: int) -> dict:
    ids = rng.integers(1, CONFIG["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)  # no pad token (0)
    segments = np.zeros((BATCH, SEQ), dtype=np.int64)
    segments[:, SEQ // 2:] = 1
    return {"input_ids": ids, "token_type_ids": segments, "label": (ids[:, 1] % 2).astype(np.int64)}
