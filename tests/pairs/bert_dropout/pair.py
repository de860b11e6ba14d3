"""The BERT example (HF vs PaddleNLP) with dropout 0.1 as the guide's BERT is published: hidden
dropout modules and attention-probability dropout (functional in HF's sdpa attention, a float in
paddle's MultiHeadAttention). A correct port must be aligned in every check, train included."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples", "bert_sst2"))
import pair as example  # noqa: E402

CONFIG = dict(example.CONFIG, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
forward_torch, forward_paddle, make_batch = example.forward_torch, example.forward_paddle, example.make_batch


def build_torch():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, hidden_act="gelu"))


def build_paddle():
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, hidden_act="gelu"))
