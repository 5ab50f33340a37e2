"""Typed configuration: dataclasses built from TOML/dicts that reject unknown keys and wrong types.

Every config in the project (datagen stages, training sections, provider settings) is a dataclass;
`from_dict` turns a parsed TOML table into one, naming the offending key and the file on error,
and `apply_overrides` applies ``section.key=value`` CLI overrides with the same checks.

The conventions every config family follows (datagen, its teacher, training):

- One error type, :class:`ConfigError`, for every problem with a config file, a ``--set`` or a value.
- One container: a TOML file with one table per section (``[captions]``, ``[teacher]``, ``[model]``...),
  read by :func:`load_config_file`. A command that needs one section (``python -m datagen.teacher``)
  reads that table of the same file, so a full datagen config works for it.
- One relative-path rule: fields declared with :func:`path_field` hold paths; a relative one written
  in a config file resolves against that file's folder (a config travels with its data), and one given
  on the command line (``--set``, flags) against the current directory, like any other typed path.
  :func:`resolve_paths` does it; no config resolves paths on its own.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with tomli
    import tomli as tomllib  # type: ignore[no-redef]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and where."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} is not a valid {' | '.join(_type_name(a) for a in args)}")


def _coerce_sequence(value: Any, origin: Any, args: tuple, where: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


# Scalar types: (accepts the value?, conversion, what the error says was expected).
_SCALARS: dict[type, tuple[Any, Any, str]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v, "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), float, "a number"),
    str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
    Path: (lambda v: isinstance(v, str | Path), Path, "a path"),
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return dict(value)
    if tp in _SCALARS:
        accepts, convert, expected = _SCALARS[tp]
        if not accepts(value):
            raise ConfigError(f"{where}: expected {expected}, got {value!r}")
        return convert(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {known}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError) and str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from exc  # every config error names its file


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain dict (paths as strings, tuples as lists) suitable for TOML/JSON metadata."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def load_toml(cls: type[T], path: str | Path) -> T:
    """``cls`` from a TOML file, paths as written (see :func:`load_config_file` for the full rule)."""
    return from_dict(cls, read_toml(path), where=str(path))


def path_field(default: Any = "", **kwargs: Any) -> Any:
    """A dataclass field that holds a path (or a list of paths): :func:`resolve_paths` resolves it."""
    metadata = {**kwargs.pop("metadata", {}), "path": True}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _resolve_one(value: Any, base: Path) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(_resolve_one(v, base) for v in value)
    if value is None or value == "" or not isinstance(value, str | Path):
        return value
    p = Path(os.path.expanduser(value))
    resolved = p if p.is_absolute() else Path(os.path.normpath(base / p))
    return resolved if isinstance(value, Path) else str(resolved)


def resolve_paths(obj: T, base_dir: str | Path) -> T:
    """``obj`` with every relative :func:`path_field` (in nested sections too) made absolute against
    ``base_dir``; empty values stay empty (they mean "not set"), absolute ones stay as they are."""
    base = Path(base_dir).absolute()
    changes = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.metadata.get("path"):
            changes[f.name] = _resolve_one(value, base)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = resolve_paths(value, base)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def load_config_file(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None
) -> T:
    """The one loader: ``cls`` from TOML ``path`` (defaults when None), then ``values``
    (``{"section.key": value}`` from generated flags) and ``overrides`` (``--set`` strings).
    Relative paths from the file resolve against its folder, those from the command line against
    the current directory."""
    cfg = cls() if path is None else resolve_paths(load_toml(cls, path), Path(path).absolute().parent)
    if values:
        cfg = apply_values(cfg, values, where="command line")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return resolve_paths(cfg, Path.cwd())


def parse_override_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _optional_section(cls: Any, key: str) -> type | None:
    """The dataclass type of ``cls.key`` when it is an optional section (``llm: ProviderConfig | None``)."""
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(key)
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    return inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None


def _section_type(cls: Any, key: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(key)
    return _optional_section(cls, key) or (tp if dataclasses.is_dataclass(tp) else None)


def apply_values(obj: T, values: dict[str, Any], where: str = "overrides") -> T:
    """Set ``{"a.b.c": value}`` in a (nested) dataclass and re-validate. An optional section that is
    unset (``vlm = None``) is created from the keys given for it (``vlm.kind``, ``vlm.model``...)."""
    data = to_dict(obj)
    for dotted, value in values.items():
        keys = dotted.strip().split(".")
        node, cls = data, type(obj)
        for key in keys[:-1]:
            if node.get(key) is None and _optional_section(cls, key) is not None:
                node[key] = {}
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"{where}: {dotted!r}: {key!r} is not a section")
            node, cls = node[key], _section_type(cls, key)
        known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(node)
        if keys[-1] not in known:
            raise ConfigError(f"{where}: {dotted!r}: unknown key {keys[-1]!r}; known keys: {', '.join(sorted(known))}")
        node[keys[-1]] = value
    return from_dict(type(obj), data, where=where)


def apply_overrides(obj: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Apply ``a.b.c=value`` overrides to a (nested) dataclass, re-validating the result."""
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        values[dotted.strip()] = parse_override_value(raw.strip())
    return apply_values(obj, values)
