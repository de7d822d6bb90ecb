"""A zeroth-order LoRA step priced on fake tensors: forward passes only, and what stays on the device.

`blockskip.zeroth_order.ZerothOrderOptimizer` runs 2 forward passes per query (central estimator)
or 1 + 1 per query (forward estimator) under `torch.no_grad()`, and no backward. The fake step
runs one such forward, so its peak is a no-grad forward's, with the optimizer's tensors resident:

- the copy of the LoRA parameters that makes the restore exact (`exact_restore=True`, the default);
- Adam's two moments (`update="adam"`), and at the update the materialised gradient estimate;
- one direction z the size of the LoRA parameters while θ is shifted (regenerated, never kept).

FLOPs and the weight copies that run with every forward (online residuals streaming the skipped
blocks' weights, group offload) are the single forward's times the forwards per step; a cached
bank's tensors come in once, since every forward of a step sees the same batch. A subspace gradient's
history (`SubspaceGradient`, τ iterates of the trainable tensors) is not priced: it is meant for an
embedding vector, where it is a few hundred kB.

This prices one step. A zeroth-order run needs many more steps than backpropagation to reach the
same loss (MeZO reports one to two orders of magnitude); `docs/zeroth_order.md` says what is measured.

Example:
    >>> from blockskip.families.step_inputs import StepShape
    >>> from blockskip.skipping.plan import BlockSkipPlan
    >>> from blockskip.training.training_step import TrainingSetup
    >>> from blockskip.estimate.step import estimate_step
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 1, "num_single_layers": 2,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> shape, plan = StepShape(64, 64, 8, 1), BlockSkipPlan()
    >>> backprop = estimate_step(config, plan, shape, TrainingSetup(), dtype=torch.float32)
    >>> zo = estimate_step(config, plan, shape, TrainingSetup(), dtype=torch.float32, zeroth_order=ZerothOrderPricing())
    >>> zo.backward_flops, zo.peak_bytes < backprop.peak_bytes, zo.forward_flops == 2 * backprop.forward_flops
    (0, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..zeroth_order.optimizer import UPDATES, forwards_per_step
from .accounting import StorageLedger

PER_FORWARD_TRAFFIC = ("streamed", "offload")  # copies every forward makes; the bank's come once a step


@dataclass(frozen=True)
class ZerothOrderPricing:
    """The zeroth-order optimizer being priced; the fields mirror `ZerothOrderOptimizer`'s."""

    queries: int = 1
    estimator: str = "central"
    update: str = "sgd"
    exact_restore: bool = True

    def __post_init__(self):
        if self.update not in UPDATES:
            raise ValueError(f"update is one of {UPDATES} (got {self.update!r})")
        forwards_per_step(self.estimator, self.queries)  # validates estimator and queries

    @property
    def forwards(self) -> int:
        return forwards_per_step(self.estimator, self.queries)

    def describe(self) -> str:
        return f"zeroth order: {self.forwards} forwards ({self.estimator}, {self.queries} quer{'y' if self.queries == 1 else 'ies'}), {self.update}, no backward"

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "estimator": self.estimator, "update": self.update,
                "exact_restore": self.exact_restore, "forwards": self.forwards}


def resident_state(params: list[nn.Parameter], pricing: ZerothOrderPricing, ledger: StorageLedger) -> list[torch.Tensor]:
    """The optimizer's tensors that stay on the device through the step, registered with `ledger`."""
    kept = []
    if pricing.exact_restore:
        kept += [param.detach().clone() for param in params]
    if pricing.update == "adam":
        kept += [torch.zeros_like(param) for param in params for _ in range(2)]
    for tensor in kept:
        ledger.register(tensor, "optimizer_state")
    return kept


def run_forward_only_step(model: nn.Module, inputs: dict[str, Any], target: torch.Tensor, params: list[nn.Parameter],
                          pricing: ZerothOrderPricing, on_phase: Callable[[str], None]) -> None:
    """One no-grad forward and the update's temporaries, as the ledger should see them.

    Phases are reported as `run_step` reports them, so the caller's FLOP marks split the same way
    ("backward" comes right after the forward and counts nothing).
    """
    with torch.no_grad():
        on_phase("forward")
        prediction = model(**inputs)[0]
        loss = F.mse_loss(prediction.float(), target.float())
        del prediction, loss
        on_phase("backward")
        on_phase("optimizer")
        directions = [torch.randn_like(param) for param in params]
        estimate = [torch.zeros_like(param) for param in params] if pricing.update == "adam" else []
        del directions, estimate
        on_phase("done")


def scale_traffic(traffic: dict[str, int], forwards: int) -> dict[str, int]:
    return {kind: count * (forwards if kind in PER_FORWARD_TRAFFIC else 1) for kind, count in traffic.items()}
