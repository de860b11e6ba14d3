"""Reading a run's TOML into a RunConfig: every value checked against its field, every error naming
the file, the key's own line and the key, with a "did you mean" (harness/config/source.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.config.optim_table import OPTIMIZERS, SCHEDULERS, decay_mode
from harness.config.schema import CHECKS, CHOICES, DEFAULT_CHECKS, MODULE_PATH, SECTIONS, TOP_LEVEL, RunConfig
from harness.config.source import Source, suggest
from harness.errors import ConfigError
from harness.verdict.tolerance import Tolerance, ToleranceConfig


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}.get(tp, str(tp))


def _coerce(src: Source, key: str, value: Any, annotation: str):
    """Check one value against the type its dataclass field declares."""
    ann = annotation.replace(" ", "")
    optional = "None" in ann
    base = ann.split("|")[0]
    if value is None and optional:
        return None
    expected = {"int": int, "float": float, "str": str, "bool": bool, "list": list}.get(base)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        got = type(value).__name__
        raise src.error(key, f"expected {_type_name(expected)}, got {got} {value!r}")
    if expected is list and key.split(".")[-1] in ("inputs", "labels", "no_decay", "fields"):
        if not all(isinstance(v, str) for v in value):
            raise src.error(key, "expected a list of strings")
    return value


def _section(src: Source, name: str, cls, table: Any):
    if not isinstance(table, dict):
        raise src.error(name, f"expected a table [{name}], got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise src.error(f"{name}.{key}", f"unknown key '{key}' in [{name}]{suggest(key, fields)}")
        f = fields[key]
        values[key] = _coerce(src, f"{name}.{key}", value, str(f.type))
        choices = CHOICES.get((name, key))
        if choices and values[key] not in choices:
            raise src.error(
                f"{name}.{key}",
                f"'{values[key]}' is not one of {', '.join(choices)}{suggest(str(values[key]), choices)}",
            )
    return cls(**values)


def _tolerance(src: Source, key: str, value: Any, default: Tolerance) -> Tolerance:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise src.error(key, f"tolerance must be >= 0, got {value}")
        if default.rtol is not None and default.mean == 0.0:  # a relative check: a number is rtol
            return Tolerance(0.0, rtol=float(value))
        return Tolerance(float(value))
    if isinstance(value, dict):
        allowed = {"mean", "max", "rtol", "allow_nan"}
        for k in value:
            if k not in allowed:
                raise src.error(f"{key}.{k}", f"unknown key '{k}' (expected one of {', '.join(sorted(allowed))}){suggest(k, allowed)}")
        out = {}
        for k in ("mean", "max", "rtol"):
            if k in value:
                v = value[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise src.error(f"{key}.{k}", f"expected a number >= 0, got {v!r}")
                out[k] = float(v)
        if "allow_nan" in value:
            if not isinstance(value["allow_nan"], bool):
                raise src.error(f"{key}.allow_nan", "expected true or false")
            out["allow_nan"] = value["allow_nan"]
        mean = out.pop("mean", default.mean if "rtol" not in out else 0.0)
        return Tolerance(mean, **out)
    raise src.error(key, f"expected a number or a table {{mean, max, rtol, allow_nan}}, got {value!r}")


# the checks a [tolerance] value applies to (init decides by a significance level of its own)
TOLERANCED = tuple(f.name for f in dataclasses.fields(ToleranceConfig) if f.name != "keys")


def _tolerances(src: Source, table: Any) -> ToleranceConfig:
    if not isinstance(table, dict):
        raise src.error("tolerance", "expected a table [tolerance]")
    base = ToleranceConfig()
    values: dict = {}
    keys: dict = {}
    for key, value in table.items():
        if key in TOLERANCED:
            values[key] = _tolerance(src, f"tolerance.{key}", value, base.for_check(key))
        elif any(c in key for c in "*?[."):
            keys[key] = _tolerance(src, f'tolerance."{key}"', value, Tolerance())
        else:
            raise src.error(
                f"tolerance.{key}",
                f"unknown key '{key}' in [tolerance]: expected a check name ({', '.join(TOLERANCED)}) "
                f"or a quoted key glob like \"out.*\"{suggest(key, TOLERANCED)}",
            )
    return ToleranceConfig(**values, keys=keys)


def parse(text: str, path: Path, *, pair_base: Path | None = None) -> RunConfig:
    src = Source(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise src.toml_error(exc) from None
    for key in doc:
        if key not in TOP_LEVEL:
            raise src.error(key, f"unknown key '{key}'{suggest(key, TOP_LEVEL)}")
    if "pair" not in doc:
        raise ConfigError(path, "pair", "missing required key 'pair' (path of the pair module, relative to this file)")
    if not isinstance(doc["pair"], str):
        raise src.error("pair", f"expected a string path, got {doc['pair']!r}")
    pair = _pair_module(src, doc["pair"], pair_base or path.parent)
    name = doc.get("name", path.stem if path.stem != "pair" else path.parent.name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):  # a folder's name
        raise src.error("name", f"expected a simple name (letters, digits, _ . -; at most 100), got {name!r}")
    kwargs: dict = {}
    for sec, cls in SECTIONS.items():
        if sec in doc:
            kwargs[sec] = _section(src, sec, cls, doc[sec])
    if "workers" in kwargs:
        kwargs["workers"] = _relative_to(kwargs["workers"], path.parent)
    if "tolerance" in doc:
        kwargs["tolerance"] = _tolerances(src, doc["tolerance"])
    if "mapping" in doc:
        kwargs["mapping"] = _mapping(src, doc["mapping"])
    if "checks" in doc:
        kwargs["checks"] = parse_checks(doc["checks"], lambda m: src.error("checks", m))
        kwargs["checks_given"] = True
    cfg = RunConfig(name=name, pair=pair, source=path, **kwargs)
    _cross_checks(src, cfg)
    return cfg


def _pair_module(src: Source, given: str, base: Path) -> Path:
    """The pair module's path: an existing Python file (a .py the import machinery can load)."""
    try:
        pair = (base / given).resolve()
        found = pair.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise src.error("pair", f"cannot look up pair module '{given}': {getattr(exc, 'strerror', None) or exc}") from None
    if not found:
        raise src.error("pair", f"pair module '{given}' not found (looked at {pair})")
    if pair.suffix != ".py":
        raise src.error("pair", f"pair module '{given}' is not a Python file (a .py holding build_torch, build_paddle "
                                "and make_batch; see `reprod-harness init`)")
    return pair


def _flatten(table: dict, prefix: str = "") -> dict:
    """TOML reads an unquoted dotted key (encoder.layer = ...) as nested tables: back to the dotted prefix."""
    out: dict = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        out.update(_flatten(value, full) if isinstance(value, dict) else {full: value})
    return out


def _mapping(src: Source, table: Any) -> dict:
    """[mapping]: module-prefix renames torch -> paddle, applied before the automatic pairing.
    Whether each prefix names a module is known only once the models are built (mapping_error)."""
    if not isinstance(table, dict):
        raise src.error("mapping", 'expected a table [mapping] of "torch prefix" = "paddle prefix"')
    flat = _flatten(table)
    targets: dict = {}
    for key, value in flat.items():
        where = f'mapping."{key}"'
        if not isinstance(value, str):
            raise src.error(where, f"expected a paddle module prefix (a string), got {value!r}")
        for side, path in (("torch", key), ("paddle", value)):
            if not MODULE_PATH.fullmatch(path):
                raise src.error(where, f"'{path}' is not a {side} module path (names joined by dots, like \"encoder.layer\")")
        if value in targets:
            raise src.error(where, f"'{targets[value]}' and '{key}' both map to paddle '{value}': each paddle prefix once")
        targets[value] = key
    return flat


def _relative_to(workers, folder: Path):
    """[workers] paths as given, relative to the TOML's folder (checked when a run uses them)."""
    return dataclasses.replace(workers, **{k: str(folder / Path(v).expanduser()) for k, v in
                                           dataclasses.asdict(workers).items() if v is not None})


def mapping_error(cfg: RunConfig, key: str, message: str) -> ConfigError:
    """An error about one [mapping] entry, found once the models are built, at its TOML line."""
    return key_error(cfg, f'mapping."{key}"', message)


def key_where(cfg: RunConfig, key: str) -> str:
    """'file:line: key', as a config error names a key of the run's TOML."""
    return f"{key_error(cfg, key, '').file}: {key}"


def key_error(cfg: RunConfig, key: str, message: str) -> ConfigError:
    """An error about a key of the run's TOML found after parsing, at the key's line."""
    try:
        text = Path(cfg.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    return Source(cfg.source, text).error(key, message)


def _cross_checks(src: Source, cfg: RunConfig) -> None:
    for sec, key, value, low in (
        ("data", "batch_size", cfg.data.batch_size, 1),
        ("data", "eval_batches", cfg.data.eval_batches, 1),
        ("data", "items", cfg.data.items, 0),
        ("data", "batches", cfg.data.batches, 0),
        ("train", "iters", cfg.train.iters, 1),
        ("train", "train_iters", cfg.train.train_iters, 1),
        ("train", "epochs", cfg.train.epochs, 1),
        ("train", "steps", cfg.train.steps, 1),
        ("train", "eval_every", cfg.train.eval_every, 1),
        ("train", "patience", cfg.train.patience, 1),
        ("distributed", "nprocs", cfg.distributed.nprocs, 1),
    ):
        if value is not None and value < low:
            raise src.error(f"{sec}.{key}", f"must be >= {low}, got {value}")
    if cfg.train.epochs is not None and cfg.train.steps is not None:
        raise src.error("train.steps", "[train] epochs and steps both set the training run's length: give one")
    if cfg.optimizer.lr <= 0:
        raise src.error("optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    try:
        decay_mode(dataclasses.asdict(cfg.optimizer))
    except ValueError as exc:
        raise src.error("optimizer.decay", str(exc)) from None
    if cfg.optimizer.grad_clip and cfg.optimizer.clip_value:
        raise src.error("optimizer.clip_value", "grad_clip and clip_value together: choose one (paddle takes one grad_clip)")
    if cfg.lr_scheduler.name not in SCHEDULERS:
        raise src.error("lr_scheduler.name", f"unknown scheduler '{cfg.lr_scheduler.name}' (expected {', '.join(SCHEDULERS)}){suggest(cfg.lr_scheduler.name, SCHEDULERS)}")
    if cfg.optimizer.name not in OPTIMIZERS:
        raise src.error("optimizer.name", f"unknown optimizer '{cfg.optimizer.name}' (expected {', '.join(OPTIMIZERS)}){suggest(cfg.optimizer.name, OPTIMIZERS)}")
    if not cfg.data.labels and cfg.label_readers:
        raise src.error("data.labels", f"is empty, but the {', '.join(cfg.label_readers)} check(s) compute a built-in "
                                       "loss or metric, which reads a label: name one, or set [loss]/[metric] kind = "
                                       "\"pair\" with the pair's own loss_*/metric_*")
    names = cfg.data.fields
    if any(not n for n in names) or len(set(names)) != len(names):
        raise src.error("data.fields", f"expected distinct non-empty names for the positional fields, got {names}")


def parse_checks(value, fail) -> tuple:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise fail(f"expected a non-empty list of checks from {', '.join(CHECKS)} (default: {', '.join(DEFAULT_CHECKS)})")
    for v in value:
        if v not in CHECKS:
            raise fail(f"unknown check '{v}' (expected {', '.join(CHECKS)}){suggest(str(v), CHECKS)}")
    return tuple(c for c in CHECKS if c in value)  # always run in the guide's order


def load(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    return parse(text, path.resolve())


def backends_dir() -> Path:
    """The backends package's folder, found without importing it: the coordinator reads the zoo
    and the starter templates there as data and never runs backends code."""
    spec = importlib.util.find_spec("backends")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("backends", None, "the backends package is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def zoo_dir() -> Path:
    return backends_dir() / "zoo"


def templates_dir() -> Path:
    return backends_dir() / "templates"


def zoo_names() -> list[str]:
    return sorted(p.parent.name for p in zoo_dir().glob("*/pair.toml"))


def load_zoo(name: str) -> RunConfig:
    names = zoo_names()
    if name not in names:
        raise ConfigError("--zoo", None, f"no zoo pair '{name}' (available: {', '.join(names)}){suggest(name, names)}")
    return load(zoo_dir() / name / "pair.toml")
