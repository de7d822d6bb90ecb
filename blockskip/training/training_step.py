"""One LoRA training step, written once and run on real tensors or on fake ones.

The estimator (`blockskip.estimate`) and its calibration (`benchmarks/estimate_calibration.py`)
must measure *the same* step, so both use this recipe:

1. `prepare_model`: freeze the model, `apply_block_skip(plan)`, `add_adapter` with LoRA on the
   kept blocks' target layers (`attach_lora`), then cast the LoRA to its dtype,
   `apply_memory_trades` and train mode (`finish_preparation`). The estimator runs the first half
   on the meta device and gives the model fake tensors in between;
2. `make_optimizer`: AdamW, SGD, or 8-bit AdamW (bitsandbytes on CUDA; a stand-in that holds the
   same state bytes elsewhere), with its state created up front, as it is after the first step;
3. `run_step`: forward, flow-matching MSE loss in fp32, backward, optimizer step, zero_grad.

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip.families.step_inputs import StepShape, training_inputs
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> setup = TrainingSetup(lora_rank=4)
    >>> handle = prepare_model(model, {"skip": {"leading": 1, "trailing": 1}}, setup)
    >>> optimizer = make_optimizer(model, setup)
    >>> inputs, target = training_inputs(model, StepShape(height=64, width=64, text_length=5))
    >>> loss = run_step(model, inputs, target, optimizer)
    >>> bool(torch.isfinite(loss))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..skipping.lora import lora_target_modules
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip import BlockSkipHandle, apply_block_skip
from ..skipping.trades import apply_memory_trades

OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

# bitsandbytes' 8-bit Adam: uint8 moments with one fp32 absmax per block of 256 values; tensors
# below `min_8bit_size` (4096 values) keep fp32 moments (bitsandbytes.optim.optimizer.Optimizer2State).
_EIGHT_BIT_BLOCK = 256
_EIGHT_BIT_MIN_SIZE = 4096


@dataclass(frozen=True)
class TrainingSetup:
    """How the LoRA is trained; everything about a step except the model, plan and data shape.

    `lora_dtype=None` keeps the dtype PEFT gives the LoRA weights (the base layer's).
    """

    lora_rank: int = 4
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_dtype: torch.dtype | None = None
    optimizer: str = "adamw"
    learning_rate: float = 1e-4

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank {self.lora_rank} must be >= 1")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def attach_lora(model: nn.Module, plan: BlockSkipPlan | dict, setup: TrainingSetup, schedule: Any = None) -> BlockSkipHandle:
    """Freeze the model, skip the plan's blocks and add LoRA to the kept blocks' target layers.

    `schedule` is the `TrainingSchedule` a cached plan's bank was made for.
    """
    from peft import LoraConfig

    model.requires_grad_(False)
    handle = apply_block_skip(model, plan, schedule=schedule)
    targets = lora_target_modules(model, setup.lora_targets)
    if not targets:
        raise ValueError(
            f"no layer of the kept blocks matches the LoRA targets {list(setup.lora_targets)}; "
            "pass lora_targets that name this model's layers"
        )
    model.add_adapter(LoraConfig(r=setup.lora_rank, lora_alpha=setup.lora_rank, target_modules=targets))
    return handle


def finish_preparation(model: nn.Module, setup: TrainingSetup, trades_plan: BlockSkipPlan | None = None) -> None:
    """Cast the LoRA to its dtype, apply the memory trades (`trades_plan` or the skip's plan), train mode."""
    if setup.lora_dtype is not None:
        for parameter in trainable_parameters(model):
            parameter.data = parameter.data.to(setup.lora_dtype)
    apply_memory_trades(model, trades_plan)
    model.train()


def prepare_model(model: nn.Module, plan: BlockSkipPlan | dict, setup: TrainingSetup, schedule: Any = None) -> BlockSkipHandle:
    """`attach_lora` then `finish_preparation`: the model is ready for `run_step`, changed in place."""
    handle = attach_lora(model, plan, setup, schedule)
    finish_preparation(model, setup)
    return handle


class EightBitAdamWStandIn(torch.optim.Optimizer):
    """Holds exactly the state bitsandbytes' `AdamW8bit` holds, for memory accounting only.

    Used where bitsandbytes cannot run (CPU, fake tensors). Its update is a plain in-place step,
    not Adam: never train with it.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-4):
        super().__init__(params, {"lr": lr})

    def init_state(self) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                state = self.state[parameter]
                if state:
                    continue
                count = parameter.numel()
                if count < _EIGHT_BIT_MIN_SIZE:
                    state["state1"] = torch.zeros_like(parameter, dtype=torch.float32)
                    state["state2"] = torch.zeros_like(parameter, dtype=torch.float32)
                else:
                    blocks = -(-count // _EIGHT_BIT_BLOCK)
                    state["state1"] = torch.zeros_like(parameter, dtype=torch.uint8)
                    state["state2"] = torch.zeros_like(parameter, dtype=torch.uint8)
                    state["absmax1"] = parameter.new_zeros(blocks, dtype=torch.float32)
                    state["absmax2"] = parameter.new_zeros(blocks, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        self.init_state()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.add_(parameter.grad, alpha=-group["lr"])


def make_optimizer(model: nn.Module, setup: TrainingSetup, *, foreach: bool | None = None) -> torch.optim.Optimizer:
    """The setup's optimizer over the trainable (LoRA) parameters, its state already created.

    `foreach=True` picks torch's multi-tensor AdamW, which CUDA uses by default; the estimator
    asks for it so that fake CPU runs hold the temporaries a GPU run holds.
    """
    params = trainable_parameters(model)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=setup.learning_rate)
    if setup.optimizer == "adamw8bit":
        if params and params[0].device.type == "cuda":
            try:
                import bitsandbytes

                optimizer = bitsandbytes.optim.AdamW8bit(params, lr=setup.learning_rate)
                _initialise_state(optimizer, params)
                return optimizer
            except ImportError:
                pass
        optimizer = EightBitAdamWStandIn(params, lr=setup.learning_rate)
        optimizer.init_state()
        return optimizer
    optimizer = torch.optim.AdamW(params, lr=setup.learning_rate, foreach=foreach)
    _initialise_state(optimizer, params)
    return optimizer


def _initialise_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Create the optimizer state with a zero-gradient step, as if one step had already run."""
    saved = [parameter.detach().clone() for parameter in params]
    for parameter in params:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    with torch.no_grad():
        for parameter, value in zip(params, saved):
            parameter.copy_(value)
            parameter.grad = None


def run_step(
    model: nn.Module,
    inputs: dict[str, Any],
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    on_phase: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Forward, fp32 MSE loss, backward, optimizer step, zero_grad. Returns the (detached) loss.

    `on_phase` is told "forward", "backward", "optimizer" and "done" as the step moves on.
    """
    notify = on_phase or (lambda phase: None)
    notify("forward")
    prediction = model(**inputs)[0]
    loss = F.mse_loss(prediction.float(), target.float())
    del prediction
    notify("backward")
    loss.backward()
    notify("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    notify("done")
    return loss.detach()


def without_group_offload(plan: BlockSkipPlan) -> BlockSkipPlan:
    """The same plan with `kept_blocks.group_offload` off."""
    return replace(plan, kept_blocks=replace(plan.kept_blocks, group_offload=False))
