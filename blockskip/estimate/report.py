"""What an estimate reports: one step's peak, breakdown and FLOPs, and the plan next to its baseline.

`StepEstimate` is one configuration's fake training step (`blockskip.estimate.step`);
`TrainingEstimate` pairs the plan's step with the unskipped baseline's and prints them side by
side. Bytes are `torch.cuda.max_memory_allocated`-style device bytes.

Example:
    >>> row = StepEstimate("plan", {}, 64, 64, None, 8, 1, "bfloat16", "online", "cuda", 3 << 20,
    ...     {}, {}, 10**12, 2 * 10**12)
    >>> row.flops, describe_step(row)
    (3000000000000, 'skip 0 leading + 0 trailing; no memory trades')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .accounting import CATEGORIES
from .memory import format_bytes
from .step_time import StepTime, format_seconds, step_time


@dataclass
class StepEstimate:
    """One configuration's training step. Bytes are device bytes; FLOPs count matmuls and attention."""

    label: str
    plan: dict[str, Any]
    height: int
    width: int
    frames: int | None
    text_length: int
    batch_size: int
    dtype: str
    residuals: str
    device: str
    peak_bytes: int
    breakdown: dict[str, int]
    resident_bytes: dict[str, int]
    forward_flops: int
    backward_flops: int
    host_bytes: int = 0  # weights waiting on the CPU (skipped blocks, offloaded kept blocks)
    model_parameters: int = 0
    skip: dict[str, Any] = field(default_factory=dict)  # leading, trailing, source
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    streamed_flops: int = 0  # run inside skipped blocks computed online (forward, no gradients)
    traffic: dict[str, int] = field(default_factory=dict)  # host → device bytes per step, per kind
    transfers: dict[str, int] = field(default_factory=dict)  # how many copies make up each kind
    streamed_spans: int = 0
    zeroth_order: dict[str, Any] | None = None  # the ZerothOrderPricing of a forward-only step

    @property
    def flops(self) -> int:
        return self.forward_flops + self.backward_flops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flops"] = self.flops
        return data


@dataclass
class TrainingEstimate:
    """The plan's step next to the unskipped baseline's."""

    model: str
    parameters: int
    step: StepEstimate
    baseline: StepEstimate | None = None
    gpu: str | None = None  # a `blockskip.estimate.gpus` key: adds modelled seconds per step

    def step_time(self, row: StepEstimate) -> StepTime | None:
        return step_time(row, self.gpu) if self.gpu else None

    @property
    def time_ratio(self) -> float | None:
        if not (self.gpu and self.baseline):
            return None
        return self.step_time(self.step).seconds / self.step_time(self.baseline).seconds

    @property
    def memory_ratio(self) -> float | None:
        return self.step.peak_bytes / self.baseline.peak_bytes if self.baseline else None

    @property
    def flops_ratio(self) -> float | None:
        return self.step.flops / self.baseline.flops if self.baseline and self.baseline.flops else None

    def to_dict(self) -> dict[str, Any]:
        def row(estimate: StepEstimate | None) -> dict[str, Any] | None:
            if estimate is None:
                return None
            time = self.step_time(estimate)
            return {**estimate.to_dict(), "step_time": time.to_dict() if time else None}

        return {
            "model": self.model,
            "parameters": self.parameters,
            "gpu": self.gpu,
            "step": row(self.step),
            "baseline": row(self.baseline),
            "memory_ratio": self.memory_ratio,
            "flops_ratio": self.flops_ratio,
            "time_ratio": self.time_ratio,
        }

    def format_table(self) -> str:
        """A side-by-side table: peak, breakdown, FLOPs, for the baseline and the plan."""
        rows = [self.baseline, self.step] if self.baseline else [self.step]
        labels = ["", *(row.label for row in rows)]
        lines: list[list[str]] = [labels]
        lines.append(["resolution", *(_resolution(row) for row in rows)])
        lines.append(["peak memory", *(format_bytes(row.peak_bytes) for row in rows)])
        for category in CATEGORIES:
            lines.append([f"  {category.replace('_', ' ')}", *(format_bytes(row.breakdown[category]) for row in rows)])
        lines.append(["weights on the CPU", *(format_bytes(row.host_bytes) for row in rows)])
        lines.append(["TFLOPs forward", *(f"{row.forward_flops / 1e12:.2f}" for row in rows)])
        lines.append(["TFLOPs backward", *(f"{row.backward_flops / 1e12:.2f}" for row in rows)])
        lines.append(["TFLOPs step", *(f"{row.flops / 1e12:.2f}" for row in rows)])
        lines.append(["host → device per step", *(format_bytes(sum(row.traffic.values())) for row in rows)])
        if self.gpu:
            times = [self.step_time(row) for row in rows]
            lines.append([f"s/step on {self.gpu} (modelled)", *(format_seconds(time.seconds) for time in times)])
            lines.append(["  compute", *(format_seconds(time.compute_seconds) for time in times)])
            lines.append(["  copies not hidden", *(format_seconds(time.exposed_seconds) for time in times)])
        widths = [max(len(line[column]) for line in lines) for column in range(len(labels))]
        text = [
            "  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column]) for column, cell in enumerate(line))
            for line in lines
        ]
        header = f"{self.model} ({self.parameters / 1e9:.2f}B parameters), {self.step.dtype}, batch {self.step.batch_size}, text {self.step.text_length} tokens"
        footer = [f"{row.label}: {describe_step(row)}" for row in rows]
        if self.baseline:
            time = f", s/step {self.time_ratio:.2f} (modelled, uncalibrated)" if self.gpu else ""
            footer.append(f"ratio vs baseline: memory {self.memory_ratio:.2f}, FLOPs {self.flops_ratio:.2f}{time}")
        for row in rows:
            footer.extend(f"{row.label}: {note}" for note in row.notes)
        return "\n".join([header, *text, *footer])


def describe_step(row: StepEstimate) -> str:
    """One line: what the step skips, where residuals come from, which trades it uses."""
    skip = row.skip
    parts = [f"skip {skip.get('leading', 0)} leading + {skip.get('trailing', 0)} trailing"]
    if skip.get("leading") or skip.get("trailing"):
        parts[0] += f" ({skip.get('source')})"
        parts.append(f"{row.residuals} residuals")
    kept = row.plan.get("kept_blocks") or {}
    trades = [name for name, on in (("gradient checkpointing", kept.get("gradient_checkpointing")),
                                    (f"{kept.get('storage_dtype')} weights", kept.get("storage_dtype")),
                                    ("group offload", kept.get("group_offload"))) if on]
    parts.append(", ".join(trades) if trades else "no memory trades")
    return "; ".join(parts)


def _resolution(row: StepEstimate) -> str:
    side = f"{row.height}" if row.height == row.width else f"{row.height}x{row.width}"
    return f"{side}, {row.frames} frames" if row.frames else side
