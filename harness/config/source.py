"""Where a config error points, and what it suggests: the line of a key *within its own table*
(`[optimizer] name` is not the top-level `name`), and a "did you mean" that ignores case and knows
how the frameworks spell our keys (paddle `learning_rate`, `epsilon`; torch `betas`, `T_max`)."""

from __future__ import annotations

import ast
import difflib
import re
from pathlib import Path

from harness.errors import ConfigError

# Other spellings -> ours, matched after lower-casing and dropping "_" and "-". A hint is given
# only when its target is a valid option where the typo was made.
KEY_ALIASES = {
    "learningrate": "lr", "baselr": "lr", "epsilon": "eps", "adamepsilon": "eps", "betas": ("beta1", "beta2"),
    "usenesterov": "nesterov", "boundaries": "milestones", "decaysteps": "total_steps", "tmax": "total_steps",
    "totaliters": "total_steps", "numtrainingsteps": "total_steps", "maxsteps": "total_steps",
    "numwarmupsteps": "warmup_steps", "warmup": "warmup_steps", "warmupiters": "warmup_steps",
    "etamin": "end_lr", "endlearningrate": "end_lr", "factor": "gamma", "decayrate": "gamma",
    "maxlearningrate": "max_lr", "phasepct": "pct_start", "dividefactor": "div_factor",
    "clipnorm": "grad_clip", "maxnorm": "grad_clip", "maxgradnorm": "grad_clip", "clipgradnorm": "grad_clip",
    "clipgradvalue": "clip_value", "applydecayparamfun": "no_decay", "l2decay": "weight_decay",
    "randomseed": "seed", "nranks": "nprocs", "worldsize": "nprocs", "nprocpernode": "nprocs",
    "scheduler": "lr_scheduler", "lrschedule": "lr_scheduler", "optim": "optimizer", "tolerances": "tolerance",
    "torchinterpreter": "torch_python", "torchexecutable": "torch_python", "pythontorch": "torch_python",
    "paddleinterpreter": "paddle_python", "paddleexecutable": "paddle_python", "pythonpaddle": "paddle_python",
    "interpreters": "workers", "environments": "workers", "envs": "workers",
    "numtrainepochs": "epochs", "numepochs": "epochs", "epoch": "epochs", "maxepochs": "epochs",
    "evalsteps": "eval_every", "evalinterval": "eval_every", "evalfreq": "eval_every", "evalperiod": "eval_every",
    "earlystoppingpatience": "patience",
}
VALUE_ALIASES = {
    "adamwoptimizer": "adamw", "sgdmomentum": "momentum",
    "steplr": "step", "stepdecay": "step", "multisteplr": "multistep", "multistepdecay": "multistep",
    "exponentiallr": "exponential", "exponentialdecay": "exponential", "cosineannealinglr": "cosine",
    "cosineannealingdecay": "cosine", "linearwarmup": "linear_warmup", "polynomiallr": "polynomial",
    "polynomialdecay": "polynomial", "reducelronplateau": "plateau", "reduceonplateau": "plateau",
    "onecyclelr": "onecycle", "constantlr": "constant",
    "crossentropyloss": "cross_entropy", "ce": "cross_entropy", "mseloss": "mse", "l2loss": "mse",
    "acc": "accuracy", "top5": "topk", "f1score": "f1", "macrof1": "f1",
}


def _norm(word: str) -> str:
    return re.sub(r"[_\-\s]", "", str(word)).lower()


def suggest(word, options) -> str:
    """' (did you mean ...?)' or ''. Case never matters (`adamW` -> 'adamw'); known spellings of
    other frameworks come next; then the closest option by spelling."""
    if len(str(word)) > 100:  # no option is that long, and difflib would take seconds
        return ""
    options = [str(o) for o in options]
    by_norm = {_norm(o): o for o in options}
    w = _norm(word)
    alias = KEY_ALIASES.get(w) or VALUE_ALIASES.get(w)
    targets = alias if isinstance(alias, tuple) else (alias,) if alias else ()
    if targets and all(t in options for t in targets):
        return " (did you mean " + " and ".join(f"'{t}'" for t in targets) + "?)"
    if w in by_norm and by_norm[w] != word:
        return f" (did you mean '{by_norm[w]}'?)"
    close = difflib.get_close_matches(str(word).lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{next(o for o in options if o.lower() == close[0])}'?)"
    return ""


def key_parts(key: str) -> tuple:
    """`tolerance."out.*".max` -> ('tolerance', 'out.*', 'max'): dots inside quotes stay."""
    return tuple(p.strip().strip('"').strip("'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', key))


HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
ASSIGN = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=""")


def key_lines(text: str) -> dict:
    """Full key path -> first line number, for every table header and every assignment, the
    path being the current table plus the (possibly dotted) key of the line."""
    lines, table = {}, ()
    for number, raw in enumerate(text.splitlines(), 1):
        header = HEADER.match(raw)
        if header:
            table = key_parts(header.group(1))
            lines.setdefault(table, number)
            continue
        assign = ASSIGN.match(raw)
        if assign:
            lines.setdefault(table + key_parts(assign.group(1)), number)
    return lines


def assignment_at(text: str, number: int) -> tuple | None:
    """The full key path (table + key) that line `number` assigns, if it assigns one."""
    table = ()
    for current, raw in enumerate(text.splitlines()[:number], 1):
        header = HEADER.match(raw)
        if header:
            table = key_parts(header.group(1))
        elif current == number and (assign := ASSIGN.match(raw)):
            return table + key_parts(assign.group(1))
    return None


class Source:
    """The TOML text, kept to point errors at a key's own line."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        self.lines = key_lines(text)

    def line(self, key: str) -> int | None:
        """The key's line; for a key inside an inline table (`forward = {maxx = 1}`) or one
        that was never written (a default), its closest written parent's."""
        parts = key_parts(key)
        unquoted = tuple(piece for part in parts for piece in part.split("."))  # encoder.layer = ... in [mapping]
        if unquoted in self.lines:
            return self.lines[unquoted]
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None

    def toml_error(self, exc: ValueError) -> ConfigError:
        """tomllib's error, naming the key or table a duplicate is (tomllib says "Cannot overwrite a value")."""
        message = str(exc)
        at = re.search(r"\(at line (\d+), column \d+\)", message)
        table = re.match(r"Cannot declare (\(.*\)) twice", message)
        if at and table:
            path = ast.literal_eval(table.group(1))
            what, how = f"[{'.'.join(path)}]", "declared twice"
        elif at and message.startswith("Cannot overwrite a value"):
            path = assignment_at(self.text, int(at.group(1)))
            what, how = ".".join(path or ()), "set twice"
        else:
            path = None
        if not path:
            return ConfigError(self.path, None, f"not valid TOML: {message}")
        return ConfigError(f"{self.path}:{at.group(1)}", what,
                           f"{how} (first at line {self.lines.get(path)}): not valid TOML, each may appear once")

    def error(self, key: str, message: str) -> ConfigError:
        line = self.line(key)
        return ConfigError(f"{self.path}:{line}" if line else str(self.path), key, message)
