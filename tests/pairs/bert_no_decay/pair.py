"""The BERT example (HF vs PaddleNLP, examples/bert_sst2) trained with the guide's no_decay list,
["bias", "LayerNorm.weight"]: HF's names. PaddleNLP calls its LayerNorms norm1, norm2 and
layer_norm, so the list only means the same parameters on both sides when it is read against
torch's names. own_optimizer.py is the same pair with each side's optimizer written by hand, the
paddle one matching the list against its own names: a port that decays 5 LayerNorm weights more."""
import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[3] / "examples" / "bert_sst2" / "pair.py"
_spec = importlib.util.spec_from_file_location("bert_sst2_example", _path)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

build_torch, build_paddle = example.build_torch, example.build_paddle
forward_torch, forward_paddle, make_batch = example.forward_torch, example.forward_paddle, example.make_batch
