"""A port whose attention scales its scores by the hidden size instead of the head size: PaddleNLP's
attention with that one line changed (functional code inside the attention, no module of its own)."""

from bert_pair import forward_paddle, forward_torch, hf_bert, make_batch, paddlenlp_bert  # noqa: F401


def build_torch():
    return hf_bert()


def build_paddle():
    model = paddlenlp_bert()
    for layer in model.bert.encoder.layers:
        _scale_by_hidden_size(layer.self_attn)
    return model


def _scale_by_hidden_size(attention):
    """paddle's MultiHeadAttention scales q by head_dim ** -0.5 right after _prepare_qkv splits the
    heads by head_dim: head_dim holds the hidden size from then until the next call."""
    prepare, head_dim, hidden = attention._prepare_qkv, attention.head_dim, attention.embed_dim

    def prepare_then_mis_scale(*args, **kwargs):
        attention.head_dim = head_dim
        qkv = prepare(*args, **kwargs)
        attention.head_dim = hidden
        return qkv

    attention._prepare_qkv = prepare_then_mis_scale
