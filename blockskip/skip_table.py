"""Skip ratio → (leading, trailing) block counts, per model.

A plan may say `{"skip": {"ratio": 0.3}}` instead of naming block counts. The ratio becomes
`k = round_half_up(ratio · N)` skipped blocks out of the model's `N`, split between the start and
the end of the stack by a table measured with the cross-attention masking probe.

Only FLUX.1 has a published table (the DiT-BlockSkip paper). Every other model gets the
documented default below until someone measures its table with `blockskip select`:
two thirds of the skipped blocks leading, one third trailing, which is the split of FLUX's
50% entry (19 leading, 10 trailing).

Example:
    >>> resolve_ratio("FluxTransformer2DModel", 57, 0.3)
    SkipSplit(leading=7, trailing=10, source='DiT-BlockSkip paper (FLUX.1), table entry for 30%')
    >>> resolve_ratio("SanaTransformer2DModel", 20, 0.3)
    SkipSplit(leading=4, trailing=2, source='default split (2/3 leading, 1/3 trailing); no measured table for SanaTransformer2DModel')
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple


class SkipSplit(NamedTuple):
    leading: int
    trailing: int
    source: str


# (model class, total blocks) -> {ratio: (leading, trailing)}.
_MEASURED_TABLES: dict[tuple[str, int], dict[float, tuple[int, int]]] = {
    ("FluxTransformer2DModel", 57): {0.3: (7, 10), 0.4: (13, 10), 0.5: (19, 10)},
}
_TABLE_SOURCES = {("FluxTransformer2DModel", 57): "DiT-BlockSkip paper (FLUX.1)"}


def blocks_for_ratio(ratio: float, num_blocks: int) -> int:
    """Number of skipped blocks for a ratio: `round_half_up(ratio · num_blocks)`."""
    exact = Decimal(repr(ratio)) * num_blocks
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def default_split(num_skipped: int) -> tuple[int, int]:
    """Two thirds leading (rounded half up), the rest trailing."""
    leading = int((Decimal(2 * num_skipped) / 3).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return leading, num_skipped - leading


def resolve_ratio(model_class: str, num_blocks: int, ratio: float) -> SkipSplit:
    """Split `ratio` of `num_blocks` into leading and trailing counts for `model_class`."""
    table = _MEASURED_TABLES.get((model_class, num_blocks), {})
    for table_ratio, (leading, trailing) in table.items():
        if abs(table_ratio - ratio) < 1e-9:
            source = f"{_TABLE_SOURCES[(model_class, num_blocks)]}, table entry for {round(ratio * 100)}%"
            return SkipSplit(leading, trailing, source)
    leading, trailing = default_split(blocks_for_ratio(ratio, num_blocks))
    reason = "no table entry for this ratio" if table else f"no measured table for {model_class}"
    return SkipSplit(leading, trailing, f"default split (2/3 leading, 1/3 trailing); {reason}")
