"""Typed option sets: every option declares its default, range and help once, next to its field.

An option set is a frozen dataclass deriving from :class:`Options`; its fields are declared with
:func:`option`. Shared sets (instance optimisation, MIND-SSC, working region) are mixins that a
method's config lists among its bases, so an option means the same, with the same range, in every
method that has it. Each option has one name. The names of earlier versions (``ALIASES``) are read
only from what those versions saved (config files, ``metrics.json``, dicts), each with a
``DeprecationWarning`` naming the new name; the command line refuses them (:meth:`Options.refuse_old_names`).

>>> import warnings
>>> @dataclass(frozen=True)
... class Smoothing(Options):
...     sigma_mm: float = option(2.0, 0.0, 20.0, "Gaussian sigma.")
...     ALIASES: ClassVar[dict] = {"sigma": "sigma_mm"}
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     Smoothing.from_dict({"sigma": 3}).sigma_mm
3.0
>>> print(caught[0].message)
Smoothing: option 'sigma' is now called 'sigma_mm'; the old name is read only from files saved by earlier versions
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import DeepLungRegError

#: The method of the CLI, the Python API, batch and the Slicer module when none is chosen: the most
#: accurate method, in both directions, that fits a CPU budget of about a minute on a 2 mm pair
#: (docs/benchmark.md, run 19).
DEFAULT_METHOD = "convex"


def option(default: Any, lo: float | None = None, hi: float | None = None, help: str = "",
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its range (``[lo, hi]``, each entry of a tuple), allowed values and help."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "help": help})


def redefault(group: type, name: str, default: Any) -> Any:
    """Option ``name`` of ``group`` with another default; its range and help stay those of the group."""
    f = {f.name: f for f in dataclasses.fields(group)}[name]
    return field(default=default, metadata=f.metadata)


def check_range(owner: str, name: str, value: float, lo: float, hi: float) -> None:
    """Refuse a numeric value outside ``[lo, hi]`` (or not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or not (lo <= value <= hi):
        raise DeepLungRegError(f"{owner}: {name} must be between {lo} and {hi}, got {value!r}")


def _merged(cls: type, attr: str) -> list:
    """Class attribute ``attr`` (a dict or tuple) of ``cls`` and its bases, the most derived last."""
    out = []
    for k in reversed(cls.__mro__):
        if attr in vars(k):
            out.append(vars(k)[attr])
    return out


@dataclass(frozen=True)
class Options:
    """Base of every option set. ``ALIASES`` maps the names of earlier versions to fields (read from
    saved files only); ``EQUAL_LENGTH`` names tuples of options that give one value per level;
    ``NONEMPTY`` options need one value at least."""

    ALIASES: ClassVar[dict[str, str]] = {}
    EQUAL_LENGTH: ClassVar[tuple[tuple[str, ...], ...]] = ()
    NONEMPTY: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ names
    @classmethod
    def aliases(cls) -> dict[str, str]:
        """``{old name: option}``: the names of earlier versions, for reading what they saved."""
        out: dict[str, str] = {}
        for d in _merged(cls, "ALIASES"):
            out.update(d)
        names = {f.name for f in dataclasses.fields(cls)}
        return {old: new for old, new in out.items() if old not in names}

    @classmethod
    def refuse_old_names(cls, names, owner: str, how: str = "{name}=VALUE") -> None:
        """Refuse the old names among ``names`` (typed by a user: ``-O``, a benchmark variant, a tune grid),
        in one line that names the new one (``how`` shows its use: ``"-O {name}=N"``)."""
        old = cls.aliases()
        for name in names:
            if name in old:
                raise DeepLungRegError(f"{owner}: option {name!r} is now called {old[name]!r}; use {how.format(name=old[name])}")

    @classmethod
    def current_names(cls, values: dict | None, stacklevel: int = 2) -> dict:
        """``values`` with the old option names replaced by the new ones, for reading what an earlier version
        saved; each old name gives a ``DeprecationWarning`` that names the new one. Other names stay as given."""
        owner = cls.__name__
        old = cls.aliases()
        out: dict = {}
        given: dict = {}
        for k, v in dict(values or {}).items():
            name = old.get(k, k)
            if name != k:
                warnings.warn(f"{owner}: option {k!r} is now called {name!r}; the old name is read only from files saved "
                              "by earlier versions", DeprecationWarning, stacklevel=stacklevel + 1)
            if name in out:
                raise DeepLungRegError(f"{owner}: {name} is given twice (as {given[name]!r} and as its old name {k!r})"
                                       if name != k else f"{owner}: {name} is given twice (also as its old name {given[name]!r})")
            out[name], given[name] = v, k
        return out

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Refuse values outside the declared ranges and choices, and per-level options of unequal
        length (subclasses add rules between options and call ``super().validate()`` first)."""
        owner = type(self).__name__
        nonempty = {n for t in _merged(type(self), "NONEMPTY") for n in t}
        for group in (g for t in _merged(type(self), "EQUAL_LENGTH") for g in t):
            lengths = {len(getattr(self, n)) for n in group}
            empty = bool(nonempty & set(group)) and 0 in lengths
            if len(lengths) > 1 or empty:
                names = ", ".join(group[:-1]) + " and " + group[-1]
                need = "non-empty and of equal length" if empty or nonempty & set(group) else "of equal length"
                raise DeepLungRegError(f"{owner}: {names} must be {need}")
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if f.name in nonempty and isinstance(value, tuple) and not value:
                raise DeepLungRegError(f"{owner}: {f.name} needs at least one value")
            if meta.get("choices") and value not in meta["choices"]:
                raise DeepLungRegError(f"{owner}: {f.name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
            if meta.get("lo") is not None:
                for v in value if isinstance(value, tuple) else (value,):
                    check_range(owner, f.name, v, meta["lo"], meta["hi"])

    # ------------------------------------------------------------------ dicts and files
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None, stacklevel: int = 2):
        """The option set from ``{name: value}``, type-checked and validated. An old name (a dict or file
        saved by an earlier version) is read as its new one, with a ``DeprecationWarning``
        (``stacklevel`` as :func:`warnings.warn`'s, counted from the caller of this method)."""
        owner = cls.__name__
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = cls.current_names(values, stacklevel + 1)
        unknown = [k for k in out if k not in fields]
        if unknown:
            raise DeepLungRegError(f"{owner}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}")
        for k, v in list(out.items()):
            if isinstance(fields[k].default, tuple):
                if isinstance(v, (list, tuple)):
                    v = tuple(v)
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    v = (v,)  # one level: refine_iterations=20 means (20,)
                else:
                    raise DeepLungRegError(f"{owner}: {k} must be a number or a list of numbers, got {v!r}")
            out[k] = _coerce(owner, k, str(fields[k].type), v)
        cfg = cls(**out)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        return cls.from_dict(read_config_json(path, cls.__name__))

    # ------------------------------------------------------------------ documentation
    @classmethod
    def settings(cls) -> list[dict]:
        """``[{"name", "default", "type", "help", "range", "choices"}]``, for GUIs and ``methods --options``.

        The help is the option's own (:func:`option`), unless a class's docstring describes it in
        its ``Attributes:`` list (the most derived class wins)."""
        helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
        for k in reversed(cls.__mro__):
            if isinstance(k, type) and issubclass(k, Options) and "__doc__" in vars(k):
                helps.update({n: h for n, h in _docstring_entries(k.__doc__ or "").items() if n in helps})
        # the set's own options first, then the shared groups
        inherited = {f.name for k in cls.__mro__[1:] if dataclasses.is_dataclass(k) for f in dataclasses.fields(k)}
        ordered = sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited)
        out = []
        for f in ordered:
            default = f.default if not isinstance(f.default, dataclasses._MISSING_TYPE) else None
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            out.append({"name": f.name, "default": list(default) if isinstance(default, tuple) else default,
                        "type": str(f.type), "help": helps.get(f.name, ""),
                        "range": None if lo is None else [lo, hi],
                        "choices": list(f.metadata["choices"]) if f.metadata.get("choices") else None})
        return out


def _docstring_entries(doc: str) -> dict[str, str]:
    """``name: text`` entries of a docstring's ``Attributes:`` list (``a, b: text`` names several;
    indented continuation lines join the entry above)."""
    helps: dict[str, str] = {}
    current: list[str] = []
    for line in doc.splitlines():
        line = line.strip()
        m = re.match(r"^(\w+(?:\s*,\s*\w+)*):\s*(.*)$", line)
        if m and not line.startswith(("Options", "Attributes")):
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                helps[n] = m.group(2).strip()
        elif line and current:
            for n in current:
                helps[n] = f"{helps[n]} {line}"
        else:
            current = []
    return helps


def _coerce(owner: str, name: str, type_name: str, value: Any) -> Any:
    """Check an option's value against its declared type: ``2.5`` for a whole-number option is refused
    (not truncated), ``"abc"`` for a number is refused, ``2`` for a float option becomes ``2.0``."""
    base = type_name.replace(" ", "")
    if base.startswith("tuple[") and isinstance(value, tuple):
        inner = base[len("tuple["):].split(",")[0]
        return tuple(_coerce(owner, name, inner, v) for v in value)
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise DeepLungRegError(f"{owner}: {name} must be a whole number, got {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DeepLungRegError(f"{owner}: {name} must be a number, got {value!r}")
        return float(value)
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise DeepLungRegError(f"{owner}: {name} must be true or false, got {value!r}")
    if base == "str" and not isinstance(value, str):
        raise DeepLungRegError(f"{owner}: {name} must be text, got {value!r}")
    return value


def read_config_json(path: str | os.PathLike, owner: str = "config") -> dict:
    """Options from a JSON file: either the options themselves or ``{"config": {...}}``."""
    return read_config_document(path, owner)[0]


def read_config_document(path: str | os.PathLike, owner: str = "config") -> tuple[dict, str | None]:
    """:func:`read_config_json`'s options, and the method the file names (``{"method": NAME, "config": {...}}``, as
    ``metrics.json`` and ``deeplungreg tune`` write them; ``None`` when it names none), from one read of the file."""
    path = Path(path)
    if not path.is_file():
        raise DeepLungRegError(f"{owner}: config file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Notepad) is allowed
    except json.JSONDecodeError as exc:
        raise DeepLungRegError(f"{owner}: {path} is not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DeepLungRegError(f"{owner}: {path} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise DeepLungRegError(f"{owner}: cannot read {path} ({exc.strerror or exc})") from exc
    options = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(options, dict):
        where = "its \"config\" entry" if isinstance(data, dict) else "it"
        raise DeepLungRegError(f"{owner}: {path} must hold a JSON object of options; {where} is {json.dumps(options)[:40]}")
    method = data.get("method") if isinstance(data, dict) else None
    return dict(options), (method if isinstance(method, str) and method else None)
