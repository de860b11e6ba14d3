"""pair.py with each side's optimizer written by hand (AdamW, decay 0.01, no_decay by name): the
paddle side matches ["bias", "LayerNorm.weight"] against its own names, where LayerNorms are
norm1, norm2 and layer_norm, so it decays 5 LayerNorm weights that torch does not."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bert_no_decay_pair", Path(__file__).resolve().parent / "pair.py")
_pair = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pair)
build_torch, build_paddle = _pair.build_torch, _pair.build_paddle
forward_torch, forward_paddle, make_batch = _pair.forward_torch, _pair.forward_paddle, _pair.make_batch

NO_DECAY = ("bias", "LayerNorm.weight")
LR, DECAY = 5e-4, 0.01


def optimizer_torch(model, total_steps):
    import torch

    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not any(s in n for s in NO_DECAY)], "weight_decay": DECAY},
              {"params": [p for n, p in named if any(s in n for s in NO_DECAY)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR), None


def optimizer_paddle(model, total_steps):
    import paddle

    decayed = {p.name for n, p in model.named_parameters() if not any(s in n for s in NO_DECAY)}
    return paddle.optimizer.AdamW(learning_rate=LR, parameters=model.parameters(), weight_decay=DECAY,
                                  apply_decay_param_fun=lambda name: name in decayed), None
