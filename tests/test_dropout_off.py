"""The worker's dropout switch, framework-free: every probability set to 0 for the block and
restored after it, functional dropout replaced and put back, attention kernels' dropout_p forced
to 0 whether passed by name or by position."""

import types

from backends.primitives import dropout_off, identity, no_dropout_p


def test_dropout_p_is_forced_to_zero_by_name_and_by_position():
    def kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False):
        return dropout_p

    forced = no_dropout_p(kernel)
    assert forced(1, 2, 3, None, 0.1, False) == 0.0  # torch's own attention passes it by position
    assert forced(1, 2, 3, attn_mask=None, dropout_p=0.1) == 0.0  # HF passes it by name
    assert forced(1, 2, 3) == 0.0


def test_every_dropout_is_off_inside_and_restored_after():
    Dropout = type("Dropout", (), {})
    drop, attention, plain = Dropout(), types.SimpleNamespace(dropout=0.1, dropout_prob=0.2), types.SimpleNamespace(p=0.5)
    drop.p = 0.3
    namespace = types.SimpleNamespace(dropout=lambda x, p, training=True: "dropped")
    with dropout_off([("drop", drop), ("attn", attention), ("other", plain)], [(namespace, "dropout", identity)]) as n:
        assert (drop.p, attention.dropout, attention.dropout_prob) == (0.0, 0.0, 0.0)
        assert plain.p == 0.5  # `p` means a probability only on a Dropout module
        assert namespace.dropout("x", 0.5) == "x" and n == 3
    assert (drop.p, attention.dropout, attention.dropout_prob) == (0.3, 0.1, 0.2)
    assert namespace.dropout("x", 0.5) == "dropped"
