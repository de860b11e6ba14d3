"""Which paddle tensor each torch tensor became when the pair converts its weights with its own
torch_to_paddle(state): found by value, in the states both models hold once the converter ran, so
that the backward check compares parameters and gradients as it does for the automatic mapping.

A paddle tensor is identified by the torch tensor it equals exactly, as is or transposed, or, for
a split of a fused projection, by the automatic plan's guess checked on the values. Candidates
are found by a few sampled values first, so each tensor is read whole only to confirm a match.
Where values cannot tell (zeros, ones, tied or repeated tensors, a square tensor equal to its
transpose), the same structured name or the automatic plan decides; a tensor still undecided, or
one the converter changed (scaled, recast, reshaped), is left out of the comparison, by name.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.errors import UsageError
from harness.mapping import weights
from harness.mapping.weights import Entry, Plan
from harness.workers.protocol import Op

SAMPLES = 64
VALUE = "value"


def _sample(arr, transpose: bool) -> tuple:
    """A few values at fixed positions of arr (of arr.T): a cheap key that equal tensors share."""
    shape = tuple(reversed(arr.shape)) if transpose else tuple(arr.shape)
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return shape, b""
    flat = np.linspace(0, size - 1, num=min(SAMPLES, size), dtype=np.int64)
    index = np.unravel_index(flat, shape)
    return shape, np.asarray(arr[tuple(reversed(index))] if transpose else arr[index], np.float64).tobytes()


def _equal(torch_value, paddle_value, transpose: bool, part: tuple | None = None) -> bool:
    value = np.asarray(torch_value)
    if part:
        value = np.split(value, part[1], axis=0)[part[0]]
    return value.shape[::-1 if transpose else 1] == np.shape(paddle_value) and \
        np.array_equal(value.T if transpose else value, np.asarray(paddle_value))


def by_value(session, torch_state: dict) -> Plan:
    """What each torch tensor of `torch_state` became in the paddle worker's model, once the
    pair's torch_to_paddle loaded it there; written to weight_map.txt."""
    session.progress("identifying by value the paddle tensor each torch tensor became")
    try:  # the automatic plan, where one can be made, as the guess for splits and ties
        guess = weights.plan(session.infos["torch"]["modules"], session.infos["paddle"]["modules"])
    except UsageError:
        guess = None
    found = identify(torch_state, session.one("paddle", Op.EXPORT_STATE), guess=guess)
    session.writer.text("weight_map.txt", "converted by the pair's torch_to_paddle(state); each paddle tensor "
                                          "identified by its values:\n\n" + found.table())
    return found


def identify(torch_state: dict, paddle_state: dict, *, guess: Plan | None = None) -> Plan:
    """torch_state / paddle_state: the initial states (arrays or shared-memory handles) after the
    converter ran; guess: the automatic plan, where one could be made, for splits and ties."""
    # each shared-memory handle opened once, memory-mapped: only sampled and matched values are read
    torch_state = {k: np.asarray(v) for k, v in torch_state.items()}
    paddle_state = {k: np.asarray(v) for k, v in paddle_state.items()}
    index: dict = {}
    for name, value in torch_state.items():
        for transpose in (False, True) if np.ndim(value) == 2 else (False,):
            index.setdefault(_sample(value, transpose), []).append((name, transpose))
    guessed = {e.paddle_name: e for e in (guess.entries if guess else []) if not e.alias_of}
    entries, left = [], {}
    for pname, pvalue in paddle_state.items():
        matches = [(t, tr, None) for t, tr in index.get(_sample(pvalue, False), []) if _equal(torch_state[t], pvalue, tr)]
        g = guessed.get(pname)
        if g is not None and g.part and g.torch_name in torch_state:  # a split: no whole tensor equals it
            ways = (g.transpose, not g.transpose) if np.ndim(pvalue) == 2 else (False,)
            matches += [(g.torch_name, tr, g.part) for tr in ways if _equal(torch_state[g.torch_name], pvalue, tr, g.part)]
        chosen, why = _resolve(pname, matches, g)
        if chosen is None:
            left[pname] = why
            continue
        tname, transpose, part = chosen
        entries.append(Entry(tname, tuple(np.shape(torch_state[tname])), pname, tuple(np.shape(pvalue)), transpose,
                             part, decided_by=VALUE, detail=why))
    return _with_aliases(entries, torch_state, left)


def _resolve(pname: str, matches: list, guess: Entry | None) -> tuple:
    """(torch name, transpose, part) of the one match, or (None, why it is left out)."""
    matches = list(dict.fromkeys(matches))
    if len(matches) == 1:
        return matches[0], "equal values"
    if not matches:
        return None, "equals no torch tensor, as is or transposed: the converter changed its values"
    names = sorted({m[0] for m in matches})
    for rule, keep in (("the same name", lambda m: m[0] == pname),
                       ("the automatic mapping", lambda m: guess is not None and m == (guess.torch_name, guess.transpose,
                                                                                      guess.part))):
        picked = [m for m in matches if keep(m)]
        if len(picked) == 1 and (picked[0][0], not picked[0][1], picked[0][2]) not in matches:
            return picked[0], f"{len(names)} torch tensors hold these values; {rule} decides"
    if len(names) == 1 or any((m[0], not m[1], m[2]) in matches for m in matches if m[0] == pname):
        return None, f"equals '{names[0] if len(names) == 1 else pname}' both as is and transposed: its values do " \
                     "not tell the layout"
    return None, f"equals {len(names)} torch tensors ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"


def _with_aliases(entries: list, torch_state: dict, left: dict) -> Plan:
    """Paddle tensors filled from one torch tensor: the first is its counterpart, the others
    aliases (a tied paddle weight); torch tensors nothing became are left out, by name."""
    first: dict = {}
    out = []
    for e in entries:
        key = (e.torch_name, e.part)
        if key in first:
            out.append(dataclasses.replace(e, alias_of=first[key]))
        else:
            first[key] = e.paddle_name
            out.append(e)
    reached = {e.torch_name for e in entries}
    dropped = [(name, f"became no paddle tensor that its values identify ({_why(name, left)})")
               for name in torch_state if name not in reached]
    plan = Plan(out, dropped)
    plan.notes = [f"paddle '{p}' left out: {why}" for p, why in left.items()]
    return plan


def _why(name: str, left: dict) -> str:
    return f"paddle '{name}' {left[name]}" if name in left else "no paddle tensor equals it"
