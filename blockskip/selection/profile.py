"""Importance profiles from the masking probe, the (n*, m*) search, and tables made from them.

A `SelectionProfile` holds, for every generation j of the probe (a LoRA, a prompt, a seed), the
semantic distance between the unmasked generation x_j and

- x_j with image → text attention masked in a window of consecutive blocks, for each window
  position (the masking curve: where in depth the subject lives);
- x̂_j(n): the first n blocks masked, for n = 1 … `max_leading`;
- x̃_j(m): the last m blocks masked, for m = 1 … `max_trailing`.

Skipping k blocks then means choosing

    (n*, m*) = argmin_{n + m = k} Σ_j [ D(x_j, x̂_j(n)) + D(x_j, x̃_j(m)) ]      (D(·, x(0)) = 0)

**Tie rule.** Splits whose cost is within a relative 1e-9 of the minimum are ties; the tie goes
to the split with the most leading blocks. A leading span is replaced exactly by its residual
(nothing upstream of it trains), a trailing span only approximately, so among equals the exact
side is preferred.

Profiles are JSON files (`save` / `load`); once measured, every skip ratio is a lookup.

Example:
    >>> profile = SelectionProfile(
    ...     model_class="MyDiT", num_blocks=6, samples=["a", "b"],
    ...     leading=[[0.0, 0.0], [0.1, 0.1], [0.3, 0.5]],      # n = 1, 2, 3
    ...     trailing=[[0.0, 0.1], [0.4, 0.4], [0.9, 0.9]])     # m = 1, 2, 3
    >>> search_split(profile, 3)
    SkipSplit(leading=2, trailing=1, source='measured with blockskip select (latent-cosine, 2 generations), k = 3')
    >>> best_skip(profile, 0.5).leading, best_skip(profile, 0.5).trailing
    (2, 1)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..skipping.skip_table import SkipSplit, SkipTable, blocks_for_ratio

PROFILE_FORMAT = "blockskip.selection_profile"
PROFILE_VERSION = 1
TIE_TOLERANCE = 1e-9
DEFAULT_TABLE_RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 20))


class ProfileError(ValueError):
    """A profile is malformed, or does not cover what was asked of it."""


def _matrix(rows: Any, name: str, width: int) -> list[list[float]]:
    if not isinstance(rows, list):
        raise ProfileError(f"{name}: expected a list of rows, got {type(rows).__name__}")
    matrix = []
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise ProfileError(f"{name}[{index}]: expected {width} distances (one per sample)")
        values = []
        for value in row:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProfileError(f"{name}[{index}]: {value!r} is not a finite number")
            values.append(float(value))
        matrix.append(values)
    return matrix


@dataclass
class SelectionProfile:
    """Masking distances for one model (see the module docstring).

    `leading[n - 1][j]` is D(x_j, x̂_j(n)); `trailing[m - 1][j]` is D(x_j, x̃_j(m));
    `window_distances[i][j]` is the distance with blocks `window_starts[i] … + window_size − 1`
    masked. `block_lists` names the model's block lists and their lengths, for plots.
    """

    model_class: str
    num_blocks: int
    samples: list[str]
    leading: list[list[float]] = field(default_factory=list)
    trailing: list[list[float]] = field(default_factory=list)
    window_size: int = 0
    window_stride: int = 1
    window_starts: list[int] = field(default_factory=list)
    window_distances: list[list[float]] = field(default_factory=list)
    metric: str = "latent-cosine"
    block_lists: list[tuple[str, int]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        width = len(self.samples)
        if self.num_blocks < 1:
            raise ProfileError(f"model.num_blocks: {self.num_blocks} must be >= 1")
        if width < 1:
            raise ProfileError("samples: a profile needs at least one generation")
        self.leading = _matrix(self.leading, "leading", width)
        self.trailing = _matrix(self.trailing, "trailing", width)
        self.window_distances = _matrix(self.window_distances, "window.distances", width)
        for name, rows in (("leading", self.leading), ("trailing", self.trailing)):
            if len(rows) > self.num_blocks - 1:
                raise ProfileError(f"{name}: {len(rows)} rows, but at most {self.num_blocks - 1} blocks can be masked")
        if len(self.window_starts) != len(self.window_distances):
            raise ProfileError("window: starts and distances differ in length")
        for start in self.window_starts:
            if not 0 <= start <= self.num_blocks - self.window_size:
                raise ProfileError(f"window.starts: {start} does not fit a window of {self.window_size} blocks")
        if self.block_lists and sum(length for _, length in self.block_lists) != self.num_blocks:
            raise ProfileError("model.block_lists: lengths do not add up to num_blocks")
        self.block_lists = [(str(name), int(length)) for name, length in self.block_lists]

    # ----------------------------------------------------------------- queries

    @property
    def max_leading(self) -> int:
        return len(self.leading)

    @property
    def max_trailing(self) -> int:
        return len(self.trailing)

    @property
    def max_skip(self) -> int:
        """The largest k whose every split (n, k − n) is measured."""
        return min(self.max_leading, self.max_trailing)

    def leading_distance(self, n: int) -> float:
        """Σ_j D(x_j, x̂_j(n)); 0 for n = 0."""
        return 0.0 if n == 0 else math.fsum(self.leading[n - 1])

    def trailing_distance(self, m: int) -> float:
        """Σ_j D(x_j, x̃_j(m)); 0 for m = 0."""
        return 0.0 if m == 0 else math.fsum(self.trailing[m - 1])

    def cost(self, n: int, m: int) -> float:
        """The search objective for skipping n leading and m trailing blocks."""
        if n > self.max_leading or m > self.max_trailing or n < 0 or m < 0:
            raise ProfileError(f"({n}, {m}) is outside the measured range ({self.max_leading}, {self.max_trailing})")
        return self.leading_distance(n) + self.trailing_distance(m)

    def window_curve(self) -> list[float]:
        """Mean distance over the samples, per window position."""
        return [math.fsum(row) / len(row) for row in self.window_distances]

    def describe_source(self) -> str:
        return f"measured with blockskip select ({self.metric}, {len(self.samples)} generations)"

    # ----------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "model": {"class": self.model_class, "num_blocks": self.num_blocks, "block_lists": self.block_lists},
            "metric": self.metric,
            "samples": list(self.samples),
            "window": {
                "size": self.window_size,
                "stride": self.window_stride,
                "starts": list(self.window_starts),
                "distances": self.window_distances,
            },
            "leading": self.leading,
            "trailing": self.trailing,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "SelectionProfile":
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a selection profile (format must be {PROFILE_FORMAT!r})")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"version {data.get('version')!r} is not {PROFILE_VERSION}; upgrade blockskip")
        try:
            model, window = data["model"], data.get("window") or {}
            return cls(
                model_class=model["class"],
                num_blocks=int(model["num_blocks"]),
                samples=[str(sample) for sample in data["samples"]],
                leading=data.get("leading", []),
                trailing=data.get("trailing", []),
                window_size=int(window.get("size", 0)),
                window_stride=int(window.get("stride", 1)),
                window_starts=[int(start) for start in window.get("starts", [])],
                window_distances=window.get("distances", []),
                metric=str(data.get("metric", "unknown")),
                block_lists=[tuple(item) for item in model.get("block_lists") or []],
                settings=dict(data.get("settings") or {}),
            )
        except (KeyError, TypeError) as error:
            raise ProfileError(f"profile is missing or mistypes {error}") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
            handle.write(text)
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates 0600; a profile is meant to be shared
        os.replace(handle.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SelectionProfile":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ProfileError(f"cannot read profile {str(path)!r}: {error.strerror or error}") from error
        except json.JSONDecodeError as error:
            raise ProfileError(f"{str(path)!r} is not valid JSON (line {error.lineno}: {error.msg})") from error
        return cls.from_dict(data)


def search_split(profile: SelectionProfile, k: int) -> SkipSplit:
    """(n*, m*) = argmin over n + m = k of the profile's cost, with the tie rule above."""
    if not 0 <= k < profile.num_blocks:
        raise ProfileError(f"k = {k} must be in [0, {profile.num_blocks - 1}] for {profile.num_blocks} blocks")
    if k > profile.max_skip:
        raise ProfileError(
            f"k = {k} needs the first and last {k} blocks masked, but the profile covers "
            f"{profile.max_leading} leading and {profile.max_trailing} trailing; rerun with a larger max_skip"
        )
    costs = [(profile.cost(n, k - n), n) for n in range(k + 1)]
    best = min(cost for cost, _ in costs)
    tolerance = TIE_TOLERANCE * max(1.0, abs(best))
    n = max(n for cost, n in costs if cost <= best + tolerance)
    return SkipSplit(n, k - n, f"{profile.describe_source()}, k = {k}")


def best_skip(profile: SelectionProfile, ratio: float) -> SkipSplit:
    """The split for a skip ratio: k = round_half_up(ratio · N), then `search_split`."""
    if not 0 <= ratio < 1:
        raise ProfileError(f"ratio {ratio} must be in [0, 1)")
    return search_split(profile, blocks_for_ratio(ratio, profile.num_blocks))


def table_from_profile(
    profile: SelectionProfile, ratios: Sequence[float] | None = None, provenance: str | None = None
) -> SkipTable:
    """A measured `SkipTable` with the profile's best split for every ratio it covers.

    `ratios` defaults to 5%, 10%, … 95%; ratios beyond the profile's `max_skip` are left out.
    """
    entries = {}
    for ratio in ratios if ratios is not None else DEFAULT_TABLE_RATIOS:
        k = blocks_for_ratio(ratio, profile.num_blocks)
        if k <= profile.max_skip and k < profile.num_blocks:
            split = search_split(profile, k)
            entries[ratio] = (split.leading, split.trailing)
    settings = profile.settings
    details = ", ".join(f"{key} {settings[key]}" for key in ("steps", "sampler", "seeds") if key in settings)
    window = f"window {profile.window_size}, stride {profile.window_stride}" if profile.window_starts else "no window"
    return SkipTable(
        profile.model_class,
        profile.num_blocks,
        entries,
        source=f"measured with blockskip select ({profile.metric})",
        provenance=provenance
        or (
            f"blockskip select: first-n/last-m cross-attention masking, metric {profile.metric}, "
            f"{len(profile.samples)} generations ({details}; {window}); tie rule: most leading blocks"
        ),
        kind="measured",
    )


def table_source_code(table: SkipTable) -> str:
    """The `_TABLES` entry for `table`, as Python source to paste into `blockskip/skipping/skip_table.py`."""
    entries = ", ".join(f"{ratio!r}: {tuple(split)!r}" for ratio, split in sorted(table.entries.items()))
    return (
        f"    ({table.model_class!r}, {table.num_blocks}): SkipTable(\n"
        f"        {table.model_class!r},\n"
        f"        {table.num_blocks},\n"
        f"        {{{entries}}},\n"
        f"        source={table.source!r},\n"
        f"        provenance={table.provenance!r},\n"
        f"        kind={table.kind!r},\n"
        f"    ),"
    )
