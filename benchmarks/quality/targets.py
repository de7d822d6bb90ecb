"""Issue 16's targets for the personalization table, checked from the per-LoRA records.

Each check prints the numbers it compares and ✓ or ✗ (≈ where a row is behind by less than one
standard error: a tie, not a win); none is tuned for, and a miss is reported,
not hidden. Comparisons between two rows are paired: the same subjects, seeds, references and
schedules trained both, so the difference is taken per (subject, seed) and its standard error is
the standard deviation of those differences over √n.

    >>> records = {"a": [{"subject": "s0", "seed": 0, "x": 0.9}, {"subject": "s1", "seed": 0, "x": 0.8}],
    ...            "b": [{"subject": "s0", "seed": 0, "x": 0.7}, {"subject": "s1", "seed": 0, "x": 0.7}]}
    >>> difference, error, n = paired(records["a"], records["b"], "x")
    >>> round(difference, 3), round(error, 3), n
    (0.15, 0.05, 2)
"""

from __future__ import annotations

import math
import statistics


def mean(rows: list[dict], metric: str) -> float:
    return statistics.mean(r[metric] for r in rows)


def paired(first: list[dict], second: list[dict], metric: str) -> tuple[float, float, int]:
    """Mean of first − second over the (subject, seed) pairs both rows have, its standard error, and n."""
    other = {(r["subject"], r["seed"]): r[metric] for r in second}
    differences = [r[metric] - other[(r["subject"], r["seed"])] for r in first if (r["subject"], r["seed"]) in other]
    if len(differences) < 2:
        return (differences[0] if differences else math.nan), math.nan, len(differences)
    return statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(differences)), len(differences)


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def target_checks(by_row: dict[str, list[dict]], side: int) -> list[str]:
    """Markdown bullet lines, one per target whose rows are present."""
    half = side // 2
    full, lines = by_row.get(f"full LoRA @{side}"), []
    if full:
        accuracy = mean(full, "subject_accuracy")
        lines.append(f"- {_mark(accuracy >= 0.7)} full LoRA @{side}: subject accuracy {accuracy:.3f} (target ≥ 0.7)")
        for name in ("skip 30% cached", "skip 30% online"):
            if by_row.get(name):
                similarity = mean(by_row[name], "subject_similarity") / mean(full, "subject_similarity")
                base_accuracy = mean(full, "subject_accuracy")
                ratio = mean(by_row[name], "subject_accuracy") / base_accuracy if base_accuracy else math.nan
                lines.append(
                    f"- {_mark(similarity >= 0.97)} {name} (+ dynamic patches @{half}): subject similarity {similarity:.3f}× full LoRA (target ≥ 0.97×)"
                )
                lines.append(f"- {_mark(ratio >= 0.8)} {name}: subject accuracy {ratio:.2f}× full LoRA (target ≥ 0.8×)")
    patches, resize = by_row.get(f"dynamic patches @{half}"), by_row.get(f"plain resize @{half}")
    if patches and resize:
        difference, error, n = paired(patches, resize, "subject_similarity")
        lines.append(
            f"- {_mark(difference > error)} dynamic patches beat plain resize @{half} on subject similarity by "
            f"{difference:+.4f} ± {error:.4f} (paired s.e., n = {n}; target: more than one s.e.)"
        )
    naive, untuned = by_row.get("skip 50% none"), by_row.get("pretrained, no LoRA")
    if naive and untuned and full:
        gained = mean(full, "subject_similarity") - mean(untuned, "subject_similarity")
        share = (mean(naive, "subject_similarity") - mean(untuned, "subject_similarity")) / gained if gained else math.nan
        lines.append(
            f"- {_mark(share <= 0.25)} naive skip 50% (no residuals) stays near no LoRA: it gains {share:.0%} of full LoRA's "
            "subject similarity over the pretrained model (near: ≤ 25%)"
        )
    selected = next((rows for name, rows in by_row.items() if name.startswith("selection tool 50%")), None)
    if selected:
        for name in ("skip first 6 only (50%)", "skip last 6 only (50%)"):
            if by_row.get(name):
                difference, error, n = paired(selected, by_row[name], "subject_similarity")
                tied = -error <= difference < 0  # behind, but by less than one standard error
                mark, note = ("≈", "; tied within one s.e., not ahead") if tied else (_mark(difference >= 0), "")
                lines.append(
                    f"- {mark} selection tool 50% vs {name}: subject similarity {difference:+.4f} ± {error:.4f} "
                    f"(paired, n = {n}; target: at least as good{note})"
                )
    return lines
