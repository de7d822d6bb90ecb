"""argparse types for the numbers the subcommands take: a bad value is a usage error naming it.

Example:
    >>> positive_int("8"), fraction("0.3"), positive_gib("7.5"), int_list("512,256")
    (8, 0.3, 7.5, (512, 256))
    >>> fraction("1.5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 1.5 is not a fraction in [0, 1)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def positive_int(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number ≥ 1")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number ≥ 0")
    return value


def fraction(text: str) -> float:
    """A skip ratio: 0 ≤ x < 1."""
    value = _number(float, text, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def positive_gib(text: str) -> float:
    value = _number(float, text, "a number of GiB")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of GiB > 0")
    return value


def non_negative_gib(text: str) -> float:
    value = _number(float, text, "a number of GiB")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of GiB ≥ 0")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers ≥ 1: `512,256`."""
    return _list(text, positive_int)


def gib_list(text: str) -> tuple[float, ...]:
    """Comma-separated GiB amounts > 0: `8,12,16,24`."""
    return _list(text, positive_gib)


def share(text: str) -> float:
    """A share of FLOPs to keep: 0 < x ≤ 1."""
    value = _number(float, text, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share in (0, 1]")
    return value


def share_list(text: str) -> tuple[float, ...]:
    """Comma-separated shares in (0, 1]: `0.7,0.5`."""
    return _list(text, share)


def output_file(text: str) -> str:
    """A file to write (missing folders are made): refused at once where a file stands in the way,
    so that a long search does not end in a failed write."""
    folder = Path(text).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {folder} is a file, not a folder")
    return text


def _list(text: str, item):
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry; give comma-separated values like 8,12")
    return tuple(item(part) for part in parts)


def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value
