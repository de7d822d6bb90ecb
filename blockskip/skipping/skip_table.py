"""Skip ratio → (leading, trailing) block counts, per model.

A plan may say `{"skip": {"ratio": 0.3}}` instead of naming block counts. The ratio becomes
`k = round_half_up(ratio · N)` skipped blocks out of the model's `N`, split between the start and
the end of the stack by a table measured with the cross-attention masking probe.

Every table records where its numbers come from (`SkipTable.kind` and `.provenance`):

- "paper": FLUX.1's table from the DiT-BlockSkip paper, the only published one.
- "measured": a table made with `blockskip select` on real weights (`selection.table_from_profile`),
  either registered at run time with `register_skip_table` or contributed to `_TABLES` below.
- "default": every other model, until someone measures it: two thirds of the skipped blocks
  leading, one third trailing, which is the split of FLUX's 50% entry (19 leading, 10 trailing).
  It is a stand-in, not a measurement, and `DEFAULT_TABLE.provenance` says so.

Example:
    >>> resolve_ratio("FluxTransformer2DModel", 57, 0.3)
    SkipSplit(leading=7, trailing=10, source='DiT-BlockSkip paper (FLUX.1), table entry for 30%')
    >>> resolve_ratio("SanaTransformer2DModel", 20, 0.3)
    SkipSplit(leading=4, trailing=2, source='default split (2/3 leading, 1/3 trailing); no measured table for SanaTransformer2DModel')
    >>> get_skip_table("FluxTransformer2DModel", 57).kind, get_skip_table("SanaTransformer2DModel", 20).kind
    ('paper', 'default')
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple


class SkipSplit(NamedTuple):
    leading: int
    trailing: int
    source: str


class SkipTable(NamedTuple):
    """Ratio → (leading, trailing) for one model class and depth, with where the numbers come from.

    `kind` is "paper", "measured" or "default"; `source` is the short name that `SkipSplit.source`
    quotes; `provenance` says how the entries were obtained (method, metric, data, who and when).
    """

    model_class: str
    num_blocks: int
    entries: dict[float, tuple[int, int]]
    source: str
    provenance: str
    kind: str = "measured"


TABLE_KINDS = ("paper", "measured", "default")

# (model class, total blocks) -> table. To contribute a measured table, paste the entry that
# `blockskip select --from-profile PROFILE --table` prints here (see docs/selection.md).
_TABLES: dict[tuple[str, int], SkipTable] = {
    ("FluxTransformer2DModel", 57): SkipTable(
        "FluxTransformer2DModel",
        57,
        {0.3: (7, 10), 0.4: (13, 10), 0.5: (19, 10)},
        source="DiT-BlockSkip paper (FLUX.1)",
        provenance=(
            "DiT-BlockSkip (CVPR 2026, arXiv 2603.20755): cross-attention masking on LoRA-tuned FLUX.1-dev, "
            "DINO distances over 30 CustomConcept101 subjects, k = round_half_up(ratio * 57). The entries come "
            "from a secondary summary of the paper; its full text was not available to us."
        ),
        kind="paper",
    ),
}

DEFAULT_TABLE = SkipTable(
    "*",
    0,
    {},
    source="default split (2/3 leading, 1/3 trailing)",
    provenance=(
        "Not measured. Two thirds of the k skipped blocks leading (rounded half up), the rest trailing: the "
        "split of the paper's FLUX.1 50% entry (19, 10), applied to every model without a table. The paper "
        "reports that the best split differs between SANA and FLUX, so measure yours with `blockskip select`."
    ),
    kind="default",
)


def register_skip_table(table: SkipTable, *, replace: bool = False) -> SkipTable:
    """Use `table` for its model class and depth from now on (this process only).

    Refuses to replace an existing table unless `replace=True`.
    """
    if table.kind not in TABLE_KINDS:
        raise ValueError(f"SkipTable.kind {table.kind!r} is not one of {', '.join(TABLE_KINDS)}")
    for ratio, (leading, trailing) in table.entries.items():
        if not 0 <= ratio < 1 or leading < 0 or trailing < 0 or leading + trailing >= table.num_blocks:
            raise ValueError(
                f"{table.model_class} table entry {ratio}: ({leading}, {trailing}) is impossible for "
                f"{table.num_blocks} blocks"
            )
    key = (table.model_class, table.num_blocks)
    if key in _TABLES and not replace:
        raise ValueError(
            f"a table for {table.model_class} with {table.num_blocks} blocks exists ({_TABLES[key].source}); "
            "pass replace=True to override it"
        )
    _TABLES[key] = table
    return table


def get_skip_table(model_class: str, num_blocks: int) -> SkipTable:
    """The table `resolve_ratio` uses for a model: its own, or `DEFAULT_TABLE`."""
    return _TABLES.get((model_class, num_blocks), DEFAULT_TABLE)


def skip_tables() -> list[SkipTable]:
    """Every registered (paper or measured) table."""
    return list(_TABLES.values())


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
    table = get_skip_table(model_class, num_blocks)
    for table_ratio, (leading, trailing) in table.entries.items():
        if abs(table_ratio - ratio) < 1e-9:
            return SkipSplit(leading, trailing, f"{table.source}, table entry for {_percent(ratio)}")
    leading, trailing = default_split(blocks_for_ratio(ratio, num_blocks))
    reason = "no table entry for this ratio" if table is not DEFAULT_TABLE else f"no measured table for {model_class}"
    return SkipSplit(leading, trailing, f"{DEFAULT_TABLE.source}; {reason}")


def _percent(ratio: float) -> str:
    percent = ratio * 100
    return f"{round(percent)}%" if abs(percent - round(percent)) < 1e-9 else f"{percent:g}%"
