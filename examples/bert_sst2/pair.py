"""bert_sst2: Hugging Face transformers' BertForSequenceClassification vs PaddleNLP's, the pair the
Paddle reproduction guide's BERT walkthrough uses. Both are built from a small config (no download);
the automatic mapping pairs HF's query/key/value/LayerNorm tensors with PaddleNLP's
q_proj/k_proj/v_proj/norm1 ones by the order each forward calls them (34 of the 41 names differ).

The libraries are imported inside the functions: each process has only one framework, and
transformers (torch) or paddlenlp (paddle) must not load where their framework is absent.
"""

import numpy as np

CONFIG = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=64, type_vocab_size=2,  # PaddleNLP's default is 16, HF's 2
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
SEQ, BATCH = 32, 8


def build_torch():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, hidden_act="gelu"))


def build_paddle():
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, hidden_act="gelu"))


def forward_torch(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]).logits


def forward_paddle(model, batch):
    # no attention_mask on either side and no token equal to pad_token_id (0): PaddleNLP would mask
    # such tokens on its own while HF attends to them (FACTS: logits 2.5e-2 apart with 3 pads a row)
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])


def make_batch(rng: np.random.Generator, step: int) -> dict:
    ids = rng.integers(1, CONFIG["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)
    segments = np.zeros((BATCH, SEQ), dtype=np.int64)
    segments[:, SEQ // 2:] = 1
    label = (ids[:, 1] > CONFIG["vocab_size"] // 2).astype(np.int64)  # learnable: the first word after [CLS]
    return {"input_ids": ids, "token_type_ids": segments, "label": label}
