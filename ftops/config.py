"""One config mechanism for every job: strict pydantic models whose fields carry their own docs.

A config is a :class:`StrictConfig` with a docstring under each field. The same fields give

- YAML loading with one clear error naming the file, the line or the field (:func:`read_yaml`, :func:`validate`),
- ``key=value`` overrides with dotted keys for nesting (:func:`parse_overrides`, :func:`merge`),
- command-line options whose default and help come from the field (:func:`add_options`, :func:`given_options`),
  as TRL builds its CLI from its config dataclasses: defaults and help text live once, in the config.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ftops.errors import FtopsError, UsageError


class StrictConfig(BaseModel):
    """Unknown keys are an error, assignments are checked, and each field's docstring is its description."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------------------------- YAML and errors
def read_yaml(path: str | Path, what: str, *, error: type[FtopsError] = FtopsError, mapping: bool = True) -> Any:
    """The parsed YAML document at ``path``; ``error`` names the file (and line) when it is missing, unreadable,
    not YAML, or (``mapping``) not a mapping of keys."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', None) or e}); fix the file") from None
    if mapping:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise error(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(e: ValidationError, where: str, hint: str | None = None) -> str:
    """Every problem of ``e`` on one line (not the first and "+N more"): ``where: unknown key 'lora.rank';
    epochs: Input should be greater than 0 (got -1)``."""
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            problems.append(f"missing required key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {_shown(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
            problems.append(f"{loc}: {msg}{got}")
    return f"{where}: {'; '.join(problems)}" + (f"; {hint}" if hint else "")


def validate(
    model: type[BaseModel],
    data: Any,
    where: str,
    *,
    error: type[FtopsError] = FtopsError,
    hint: str | None = None,
) -> Any:
    """``model.model_validate(data)``, or ``error`` listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(validation_message(e, where, hint)) from None


# --------------------------------------------------------------------------------------------- overrides
def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["lora.r=8", "packing=true"]`` -> ``{"lora": {"r": 8}, "packing": True}`` (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise UsageError(f"override {item!r}: expected key=value, e.g. lora.r=8 or max_steps=20")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = value
    return tree


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------------------------- command line
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _inner(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    fields: list[str] | None = None,
    flags: dict[str, str] | None = None,
) -> None:
    """Add one option per field of ``model`` (all, or ``fields``), named ``--field-name`` unless ``flags`` renames
    it. Type, choices, default and help are the field's own; a bool gets ``--x/--no-x``. Values are checked by the
    model, not by argparse, so a bad value gets the same message from the command line as from YAML."""
    flags = flags or {}
    for name in fields or list(model.model_fields):
        field = model.model_fields[name]
        annotation, optional = _inner(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        text = (field.description or "").replace("``", "").replace("%", "%%").split("\n\n")[0]
        text = " ".join(text.split())
        kwargs: dict[str, Any] = {"dest": f"{model.__name__}.{name}", "default": argparse.SUPPRESS}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list:
            kwargs.update(action="append", metavar="VALUE")
        else:
            if typing.get_origin(annotation) is Literal:
                kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
            kwargs["metavar"] = None if "choices" in kwargs else name.upper()
        shown = "none" if default is None and optional else default
        if isinstance(shown, Path):
            shown = str(shown)
        if shown is not None and shown != []:
            text += f" (default: {shown})"
        parser.add_argument(flags.get(name, _flag(name)), help=text, **kwargs)


def given_options(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of ``model`` that the command line gave (its defaults stay the model's)."""
    prefix = model.__name__ + "."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def from_options(
    args: argparse.Namespace, model: type[BaseModel], *, flags: dict[str, str] | None = None, **fixed: Any
) -> Any:
    """Build ``model`` from the options :func:`add_options` added (with the same ``flags``) plus ``fixed``; a bad
    value is a usage error naming the option."""
    values = {**given_options(args, model), **fixed}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            option = (flags or {}).get(name, _flag(name)) if name in model.model_fields else name
            problems.append(f"{option}: {err['msg'].removeprefix('Value error, ')} (got {_shown(err.get('input'))})")
        raise UsageError("; ".join(problems)) from None
