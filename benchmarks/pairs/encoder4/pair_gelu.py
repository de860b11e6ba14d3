"""pair.py with a port bug: the paddle encoder's feed-forward uses GELU where torch's uses ReLU.
Caught at the forward check and located at encoder.layers.0 (bench_misaligned.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pair as _base  # noqa: E402

build_torch, make_batch, torch_to_paddle = _base.build_torch, _base.make_batch, _base.torch_to_paddle


def build_paddle():
    return _base.build_paddle(activation="gelu")
