"""Seconds per training step on a GPU profile: compute, host → device copies, and how much they overlap.

A fake step (`blockskip.estimate.step`) counts its FLOPs and every host → device copy it makes
(`StepEstimate.traffic`): the skipped blocks' weights streamed for online residuals, the kept
blocks' weights under group offload (again in the recompute when checkpointing), and the bank's
tensors under cached residuals. The model prices them on a `GpuProfile`:

- compute: FLOPs at the card's dense bf16 tensor rate times `efficiency` (the fraction a LoRA step
  achieves; 0.45 until the GPU check calibrates it). fp8 weight *storage* computes in bf16.
- a copy that is prefetched on a side stream hides behind the compute of the block before it:
  a run of `n` copies of `t` seconds each, beside blocks computing `c` seconds each, exposes
  `t + (n - 1) · max(0, t - c)` — the first copy has nothing to hide behind.
- a zeroth-order step (`StepEstimate.zeroth_order`) has no backward and no recompute; offloaded
  layers come in once per forward, and each forward's copies hide behind that forward's compute.
- the bank's tensors for a step load in the background during the previous step, so they show
  only where they take longer than the whole step's compute.

The numbers are a model, not a measurement: `docs/estimate.md` says which table rows are measured.

Example:
    >>> from blockskip.estimate.report import StepEstimate
    >>> row = StepEstimate("plan", {}, 64, 64, None, 8, 1, "bfloat16", "online", "cuda", 0, {}, {},
    ...     10**12, 2 * 10**12, traffic={"streamed": 4 * 10**9}, transfers={"streamed": 4}, streamed_flops=10**11,
    ...     streamed_spans=1)
    >>> time = step_time(row, "rtx4090-24gb")
    >>> round(time.compute_seconds, 4), round(time.traffic_seconds, 3), time.seconds > time.compute_seconds
    (0.0404, 0.16, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .gpus import GpuProfile, get_gpu

if TYPE_CHECKING:  # report.py prints step times, so it imports this module
    from .report import StepEstimate

EFFICIENCY = 0.45  # uncalibrated: the fraction of the dense bf16 rate a LoRA step achieves
FP32_RATE = 0.5  # float32 steps run as TF32 on tensor cores, half the bf16 rate


@dataclass(frozen=True)
class StepTime:
    """One step's modelled seconds on `gpu`: compute plus the copies that compute cannot hide."""

    gpu: str
    compute_seconds: float
    traffic_seconds: float  # all host → device copies, back to back
    exposed_seconds: float  # the part of them no compute hides
    efficiency: float

    @property
    def seconds(self) -> float:
        return self.compute_seconds + self.exposed_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}


def format_seconds(seconds: float) -> str:
    """Seconds at a readable scale: `format_seconds(0.6)` is '0.600 s', `format_seconds(3e-5)` '0.030 ms'."""
    if seconds == 0 or seconds >= 0.01:
        return f"{seconds:.3f} s"
    if seconds >= 1e-5:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.3f} µs"


def _exposed(total_copy: float, copies: int, runs: int, total_compute: float) -> float:
    """Copy time left over when each copy overlaps the compute of the block before it."""
    if copies == 0 or total_copy == 0:
        return 0.0
    copy, compute = total_copy / copies, total_compute / copies
    runs = max(1, min(runs, copies))
    return runs * copy + (copies - runs) * max(0.0, copy - compute)


def step_time(estimate: StepEstimate, gpu: GpuProfile | str, efficiency: float = EFFICIENCY) -> StepTime:
    """Model `estimate`'s seconds per step on `gpu` (a profile or its key; see module docs)."""
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    rate = gpu.bf16_tflops * 1e12 * efficiency * (FP32_RATE if estimate.dtype == "float32" else 1.0)
    bandwidth = gpu.host_to_device_gbps * 1e9
    compute = estimate.flops / rate
    traffic, transfers = estimate.traffic, estimate.transfers
    streamed = traffic.get("streamed", 0) / bandwidth
    offload = traffic.get("offload", 0) / bandwidth
    bank = traffic.get("bank", 0) / bandwidth
    streamed_compute = estimate.streamed_flops / rate
    # Offloaded layers come in for the forward and, with checkpointing, for the recompute: the
    # kept blocks' forward FLOPs are what hides them (backward runs on the copies autograd kept).
    kept_forward = max(0.0, estimate.forward_flops - estimate.streamed_flops) / rate
    recompute = estimate.plan.get("kept_blocks", {}).get("gradient_checkpointing", False)
    passes, hiding = 1 + int(recompute), kept_forward * (1 + int(recompute))
    if estimate.zeroth_order:  # no backward, no recompute; every forward brings the layers in again
        passes, hiding = estimate.zeroth_order["forwards"], kept_forward
    exposed = (
        _exposed(streamed, transfers.get("streamed", 0), estimate.streamed_spans, streamed_compute)
        + _exposed(offload, transfers.get("offload", 0), passes, hiding)
        + max(0.0, bank - compute)
    )
    return StepTime(gpu.key, compute, streamed + offload + bank, exposed, efficiency)
