"""GELU's tanh approximation on one side (HF's "gelu_new", a module inside BertIntermediate), the
exact GELU on the other (a function PaddleNLP's encoder layer calls between linear1 and linear2).
Weights drawn 10 times wider than BERT's so that the pre-activations reach where the two differ."""

from bert_pair import forward_paddle, forward_torch, hf_bert, make_batch, paddlenlp_bert  # noqa: F401


def build_torch():
    return hf_bert(hidden_act="gelu_new", initializer_range=0.2)


def build_paddle():
    return paddlenlp_bert(initializer_range=0.2)
