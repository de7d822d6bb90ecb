"""Turning plan text and a caller's Python values into plan fields, refusing anything else.

Everything that can go wrong while reading a plan raises `BlockSkipPlanError` naming the place:

- **text** (`parse_plan_bytes`): UTF-8, with or without a byte-order mark; UTF-16 and UTF-32 with
  a BOM (what some editors save) are decoded too. Bytes that are none of these, text that is not
  JSON, duplicate keys (JSON would silently keep the last), `NaN`/`Infinity`, integers of more
  than 30 digits and nesting too deep to parse are refused.
- **values** (`field_value`): the natural Python spellings of a value are taken as it: a
  `pathlib.Path` where a path goes, numpy numbers and 0-d tensors where a number goes (a sweep
  often produces them). Any other type is refused naming the field and the type, never by
  crashing while the message is built.

Example:
    >>> parse_plan_bytes(b'{"skip": {"leading": 2}}', "plan.json")
    {'skip': {'leading': 2}}
    >>> parse_plan_bytes(b'{"skip": {}, "skip": {}}', "plan.json")
    Traceback (most recent call last):
    ...
    blockskip.skipping.plan_sections.BlockSkipPlanError: plan.json: duplicate key "skip" (line 1, column 14); a JSON object names each key once
"""

from __future__ import annotations

import codecs
import json
import math
import numbers
import os
from typing import Any

from .plan_sections import VALUE_KINDS, BlockSkipPlanError, FieldSpec

MAX_INTEGER_DIGITS = 30  # far past any count or size a plan holds; stops a 5000-digit integer early
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def describe(value: Any) -> str:
    """A short, always-printable spelling of `value` for an error message: JSON where it is JSON."""
    if isinstance(value, int) and value.bit_length() > 64:  # printing a 5000-digit int raises ValueError
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _decode(raw: bytes, where: str) -> str:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            break
    else:
        encoding = "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise BlockSkipPlanError(
            where, f"is not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r}); save it as UTF-8"
        ) from error


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(Exception):
    """Raised inside the JSON parser; `parse_plan_bytes` turns it into a plan error with a place."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is not a plan value")
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_plan_bytes(raw: bytes, where: str) -> Any:
    """Decode and parse a plan file's bytes; `where` names the file in errors."""
    text = _decode(raw, where)
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_int=_integer, parse_constant=_refuse_constant)
    try:
        data, end = decoder.raw_decode(text, _skip_space(text, 0))
        if _skip_space(text, end) != len(text):
            raise json.JSONDecodeError("Extra data after the plan", text, _skip_space(text, end))
        return data
    except json.JSONDecodeError as error:
        raise BlockSkipPlanError(where, f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from error
    except _DuplicateKey as error:
        # The parser does not say where; the key's second spelling in the text is a good guess.
        line, column = _position(text, json.dumps(error.args[0]))
        raise BlockSkipPlanError(
            where, f"duplicate key {json.dumps(error.args[0])} (line {line}, column {column}); a JSON object names each key once"
        ) from error
    except RecursionError as error:
        raise BlockSkipPlanError(where, "is nested too deeply to be a plan") from error
    except ValueError as error:  # an over-long integer, NaN or Infinity
        raise BlockSkipPlanError(where, f"is not a plan: {error}") from error


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


def _position(text: str, needle: str) -> tuple[int, int]:
    index = max(text.find(needle, text.find(needle) + 1), 0)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def _python_number(value: Any) -> Any:
    """A numpy scalar or 0-d tensor as the Python number it holds; anything else unchanged."""
    if type(value).__module__ == "torch" and getattr(value, "ndim", None) == 0:
        value = value.item()
    elif type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    return value


def field_value(value: Any, kind: str, path: str) -> Any:
    """`value` as a field of `kind` holds it, or a `BlockSkipPlanError` at `path`.

    Example:
        >>> from pathlib import Path
        >>> field_value(Path("bank"), "path", "residuals.bank")
        'bank'
    """
    check, type_name = VALUE_KINDS[kind]
    if kind == "path" and isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif kind in ("integer", "number", "boolean"):
        value = _python_number(value)
        if kind == "integer" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        elif kind == "number" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not check(value):
        raise BlockSkipPlanError(path, f"{describe(value)} is not {type_name}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BlockSkipPlanError(path, f"{value} is not a finite number")
    return value


def read_section(data: Any, path: str, spec: FieldSpec) -> dict[str, Any]:
    """The dataclass keyword arguments of one plan section, every value checked (see `field_value`)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BlockSkipPlanError(path, f"expected an object, got {describe(data)}")
    values = {}
    for key, value in data.items():
        if key not in spec:
            name = key if isinstance(key, str) else describe(key)
            raise BlockSkipPlanError(f"{path}.{name}", f"unknown key (known: {', '.join(spec)})")
        field = spec[key]
        if value is None and field.nullable:
            continue
        values[field.attribute] = field_value(value, field.kind, f"{path}.{key}")
    return values
