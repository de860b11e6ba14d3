"""The pair's own data in a worker: what data_<framework>(split) returns (a DataLoader, a map-style
dataset or any iterable of batches), made once per split and read as items (by index, from the
dataset) and batches (in the loader's order, or collated here from given indices), each turned
into named numpy fields. A mixin of backends/base.Runner, over the framework primitives.

Every pass over a split runs with random generators of its own (Python's, numpy's and the
framework's), seeded from the run seed when the pass starts and kept between the calls that
continue it: the same pipeline draws the same random preprocessing whatever else the worker
does in between, and both workers seed theirs alike."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping

import numpy as np

from harness.pair import stubs

SPLITS = ("train", "eval")


class PipelineError(RuntimeError):
    """The pair's own data raised: said with where (data_torch('eval') item 3), its traceback kept."""


@contextlib.contextmanager
def calling(where: str):
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"{where} raised {type(exc).__name__}: {exc}") from exc
# a batch sampler is read up to this many batches past the loader's own length: one that never ends
# is named rather than followed
SAMPLER_SLACK = 1


class Split:
    """One split of this side's data: the object the pair returned, what it offers, and the pass
    over its batches that is under way."""

    def __init__(self, obj, *, name: str, where: str, collate):
        self.obj, self.name, self.where = obj, name, where
        self.loader = _is_loader(obj)
        inner = obj.dataset if self.loader else obj
        self.dataset = inner if _is_map_style(inner) else None  # items by index; not an IterableDataset
        self.collate = (getattr(obj, "collate_fn", None) or collate) if self.loader else None
        self.batch_sampler = getattr(obj, "batch_sampler", None) if self.loader else None
        self.passing = None  # the iterator of the pass under way, its position and its generators' states
        self.position, self.rng, self.seed = 0, None, None

    @property
    def kind(self) -> str:
        return "loader" if self.loader else "dataset" if self.dataset is not None else "iterable"

    def length(self) -> int | None:
        return _len(self.dataset) if self.dataset is not None else None

    def batch_count(self) -> int | None:
        return _len(self.obj)


class DataOps:
    def _split(self, split: str) -> Split:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' (expected {', '.join(SPLITS)})")
        made = self._data.get(split)
        if made is None:
            fn = self.pair_fn("data")
            where = f"data_{self.framework}('{split}')"
            if fn is None:
                raise ValueError(f"the pair module defines no data_{self.framework}(split)")
            with self._data_rng(None, fresh=True), calling(where):
                obj = fn(split)
            if stubs.is_absent(obj):
                raise TypeError(f"{where} returned {obj!r}: build {self.framework}'s own pipeline there")
            if not (_is_loader(obj) or _is_map_style(obj) or _iterable(obj)):
                raise TypeError(f"{where} returned {_what(obj)}: expected a DataLoader, a map-style dataset "
                                "(__len__ and __getitem__) or an iterable of batches")
            made = self._data[split] = Split(obj, name=split, where=where, collate=self.default_collate())
        return made

    @contextlib.contextmanager
    def _data_rng(self, split: Split | None, *, fresh: bool, seed: int | None = None):
        """Python's, numpy's and the framework's generators seeded from the run seed (fresh; `seed`
        instead: an epoch's pass of the training run) or as the split's pass left them; the model's
        own draws are restored afterwards."""
        outer = (random.getstate(), np.random.get_state(), self.rng_state())
        if fresh or split is None or split.rng is None:
            seed = self.cfg["data"]["seed"] if seed is None else seed
            random.seed(seed)
            np.random.seed(seed)
            self.seed_all(seed)
        else:
            random.setstate(split.rng[0])
            np.random.set_state(split.rng[1])
            self.set_rng_state(split.rng[2])
        try:
            yield
        finally:
            if split is not None:
                split.rng = (random.getstate(), np.random.get_state(), self.rng_state())
            random.setstate(outer[0])
            np.random.set_state(outer[1])
            self.set_rng_state(outer[2])

    # ---------------------------------------------------------------- ops
    def data_open(self, split: str, batches: int) -> dict:
        """What the split is: its kind, dataset length, number of batches, and where a batch
        sampler says them (read with generators of its own, so the pass draws as it would have)
        every batch's size and the indices of the first `batches`."""
        s = self._split(split)
        out = {"kind": s.kind, "type": _type_name(s.obj), "length": s.length(), "batches": s.batch_count(),
               "sizes": None, "order": None, "sequential": None, "sampler": None}
        lists = self._index_lists(s)
        if lists is not None:
            flat = [i for idx in lists for i in idx]
            out.update(sizes=np.asarray([len(idx) for idx in lists], np.int64), batches=len(lists),
                       order=[[int(i) for i in idx] for idx in lists[:batches]],
                       sequential=flat == list(range(len(flat))))
            sampler = getattr(s.batch_sampler, "sampler", None) if s.batch_sampler is not None else None
            out["sampler"] = type(sampler if sampler is not None else s.batch_sampler).__name__ if s.loader else None
        return out

    def _index_lists(self, s: Split, seed: int | None = None) -> list | None:
        if s.kind == "dataset":
            n, size = s.length(), self.cfg["data"]["batch_size"]
            return [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        if s.batch_sampler is None or s.dataset is None or s.batch_count() is None:
            return None  # no order to read, or none that says where it ends
        limit = s.batch_count() + SAMPLER_SLACK
        lists = []
        with self._data_rng(None, fresh=True, seed=seed), calling(f"{s.where}'s batch sampler"):
            for idx in s.batch_sampler:
                lists.append(list(idx))
                if len(lists) > limit:
                    raise ValueError(f"{s.where}: its batch sampler yields more than the loader's {limit - 1} "
                                     "batches (len(loader)): does it ever end?")
        return lists

    def data_items(self, split: str, indices: list) -> dict:
        """The dataset's items at `indices`, as fields ({index: {field: array}})."""
        s = self._split(split)
        if s.dataset is None:
            raise ValueError(f"{s.where} has no items by index (an iterable of batches)")
        out = {}
        with self._data_rng(None, fresh=True):
            for i in indices:
                with calling(f"{s.where} item {i}"):
                    item = s.dataset[int(i)]
                out[str(i)] = self.data_fields(item, f"{s.where} item {i}")
        return out

    def data_batches(self, split: str, start: int = 0, count: int = 1, max_bytes: int = 64 << 20,
                     indices: list | None = None, seed: int | None = None) -> dict:
        """Batches start.. of the split's pass (at most `count`, and no more once `max_bytes` are
        made), continuing the pass under way when it is there; `end` once the split has no more.
        With `indices`: each batch collated by this side from its dataset's items at those indices.
        seed: the pass's own (an epoch of the training run), instead of the run seed."""
        s = self._split(split)
        if indices is not None:
            with self._data_rng(None, fresh=True, seed=seed):
                return {"batches": list(self._collated(s, indices)), "end": False}
        restart = s.passing is None or start != s.position or seed != s.seed
        s.seed = seed
        with self._data_rng(s, fresh=restart, seed=seed):
            if restart:
                with calling(s.where):
                    s.passing, s.position = self._restart(s), 0
                for _ in range(start):
                    with calling(f"{s.where} batch {s.position}"):
                        done = next(s.passing, None) is None
                    if done:
                        s.passing = None
                        return {"batches": [], "end": True}
                    s.position += 1
            batches, size = [], 0
            while len(batches) < count and size < max_bytes:
                with calling(f"{s.where} batch {s.position}"):
                    batch = next(s.passing, None)
                if batch is None:
                    s.passing = None
                    return {"batches": batches, "end": True}
                fields = self.data_fields(batch, f"{s.where} batch {s.position}")
                batches.append(fields)
                size += sum(v.nbytes for v in fields.values())
                s.position += 1
        return {"batches": batches, "end": False}

    def _restart(self, s: Split):
        """A fresh pass over the split's batches (the generators were just seeded)."""
        if s.kind == "dataset":
            return self._collated(s, self._index_lists(s), stacked=True)
        return iter(s.obj)

    def _collated(self, s: Split, indices: list, *, stacked: bool = False):
        """Batches of the dataset's items at each list of indices: stacked here field by field (a
        map-style dataset), or through the loader's own collate_fn."""
        if s.dataset is None:
            raise ValueError(f"{s.where} has no dataset to collate items from")
        for i, idx in enumerate(indices):
            with calling(f"{s.where} items {idx}"):
                items = [s.dataset[int(j)] for j in idx]
            if stacked:
                yield _stack([self.data_fields(item, f"{s.where} item {j}") for item, j in zip(items, idx)],
                             f"{s.where} batch {i}")
            else:
                with calling(f"{s.where}'s collate_fn on items {idx}"):
                    batch = s.collate(items)
                yield self.data_fields(batch, f"{s.where} batch {i} (collated)")

    # ---------------------------------------------------------------- fields
    def data_fields(self, value, where: str) -> dict:
        """A batch or an item as named numpy arrays: a dict's keys, a tuple's positions (named by
        [data] fields, else "0", "1", ...) or one array ("0"); nested dicts as dotted names."""
        names = list(self.cfg["data"].get("fields") or [])
        if stubs.is_absent(value):
            raise TypeError(f"{where} is {value!r}: each side's data must be made with its own framework")
        if isinstance(value, Mapping) or _dict_like(value):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(names[i] if i < len(names) else str(i), v) for i, v in enumerate(value)]
        else:
            items = [(names[0] if names else "0", value)]
        out = {}
        for name, v in items:
            out.update(self._field(v, name, where))
        if not out:
            raise ValueError(f"{where} holds no field")
        return out

    def _field(self, value, name: str, where: str) -> dict:
        if value is None:
            return {}
        if stubs.is_absent(value):
            raise TypeError(f"{where} field '{name}' is {value!r}: each side's data must be made with its own framework")
        if isinstance(value, self.tensor_types):
            return {name: np.array(self.to_numpy(value))}
        if isinstance(value, Mapping) or _dict_like(value):
            out = {}
            for k, v in value.items():
                out.update(self._field(v, f"{name}.{k}", where))
            return out
        if isinstance(value, (list, tuple)) and any(isinstance(v, self.tensor_types) for v in value):
            value = [self.to_numpy(v) for v in value]
        if isinstance(value, (np.ndarray, np.generic, bool, int, float, str, bytes, list, tuple)):
            return {name: _array(value, f"{where} field '{name}'")}
        raise TypeError(f"{where} field '{name}' is {_what(value)}, which cannot cross to the coordinator "
                        "(return tensors, numpy arrays, numbers or strings)")


def _array(value, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise TypeError(f"{where} is a ragged list ({exc}): pad it, or return it as separate fields") from None
    if arr.dtype.hasobject:
        flat = list(arr.reshape(-1))
        if flat and all(isinstance(v, str) for v in flat):
            return arr.astype(str)
        held = sorted({_what(v) for v in flat})[:3]
        raise TypeError(f"{where} holds {', '.join(held)}, which cannot cross to the coordinator "
                        "(return tensors, numpy arrays, numbers or strings)")
    return np.array(arr)


def _stack(items: list, where: str) -> dict:
    names = list(items[0])
    for item in items[1:]:
        if list(item) != names:
            raise ValueError(f"{where}: items with different fields ({names} and {list(item)}) cannot be stacked")
    out = {}
    for name in names:
        shapes = {np.shape(item[name]) for item in items}
        if len(shapes) > 1:
            raise ValueError(f"{where}: field '{name}' has items of shapes {sorted(shapes)}, which cannot be stacked "
                             "into a batch: return a DataLoader with a collate_fn that pads them")
        out[name] = np.stack([item[name] for item in items])
    return out


def _is_loader(obj) -> bool:
    return hasattr(obj, "__iter__") and hasattr(obj, "dataset") and hasattr(obj, "batch_sampler")


def _is_map_style(obj) -> bool:
    if isinstance(obj, (list, tuple, dict, str, bytes)) or _is_loader(obj) or _iterable_dataset(obj):
        return False
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not hasattr(obj, "__next__")


def _iterable_dataset(obj) -> bool:
    """torch's or paddle's IterableDataset (paddle's defines __getitem__ and __len__, which raise)."""
    return any(c.__name__ == "IterableDataset" for c in type(obj).__mro__)


def _iterable(obj) -> bool:
    return hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, Mapping))


def _dict_like(value) -> bool:
    """HF's BatchEncoding and other mappings that are not Mapping subclasses."""
    return hasattr(value, "items") and hasattr(value, "keys") and hasattr(value, "__getitem__")


def _len(obj) -> int | None:
    try:
        return int(len(obj))
    except (TypeError, ValueError, NotImplementedError, AttributeError, RuntimeError):  # an IterableDataset, a loader of one
        return None


def _type_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def _what(value) -> str:
    name = _type_name(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
