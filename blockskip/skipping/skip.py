"""apply_block_skip / remove_block_skip: train the middle of a DiT, keep the ends as residuals.

`apply_block_skip(model, plan)` replaces the first n and last m transformer blocks of a diffusers
transformer with parameter-free stand-ins. Every stand-in keeps its slot, so block indices and
state-dict keys of the kept blocks do not move and a LoRA trained on the skipped model loads
into the full one. The original blocks leave the module tree (`.to()`, `add_adapter`, DDP and
optimizers never see them) and wait on the plan's offload device.

What a stand-in returns depends on `plan.residuals.mode`:
- "online": it runs its original block under `torch.no_grad()` on the stream it receives, with
  the weights streamed to the activations' device, and returns `input + Δ` in the block's own
  output layout, where Δ is detached. Upstream of the first kept block nothing trains, so a
  leading span returns the original block's output unchanged (exact, bit for bit). A trailing
  span's input carries gradients, and Δ acts as a stop-gradient residual.
- "none": it returns its input (naive skipping, the ablation baseline).

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, BlockSkipPlan.from_dict({"skip": {"leading": 3, "trailing": 1}}))
    >>> handle.skipped_block_names()
    ['transformer_blocks.0', 'transformer_blocks.1', 'single_transformer_blocks.0', 'single_transformer_blocks.3']
    >>> model = remove_block_skip(model)
"""

from __future__ import annotations

import json
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..families.layouts import ModelLayout, block_io_for, get_layout
from ..residuals.bank import BankError, BankReader
from ..residuals.cached import CachedResiduals
from ..residuals.fingerprint import model_fingerprint
from ..residuals.streaming import BlockStreamer, pin_block
from .plan import BlockSkipPlan
from .skip_table import SkipSplit
from .spans import SkipSpan, bank_spans, skip_spans
from .stand_in import SkippedBlock, StandInSlot

HANDLE_ATTRIBUTE = "_blockskip_handle"


class BlockSkipError(RuntimeError):
    """apply/remove was used on a model in the wrong state."""


@dataclass(eq=False)
class BlockSkipHandle:
    """What `apply_block_skip` did to a model; records the plan and undoes the change."""

    plan: BlockSkipPlan
    layout: ModelLayout
    split: SkipSplit
    spans: list[SkipSpan]
    originals: dict[str, nn.Module] = field(repr=False)
    model_device: torch.device = field(repr=False, default=torch.device("cpu"))
    model_dtype: torch.dtype = field(repr=False, default=torch.float32)
    cache: CachedResiduals | None = field(repr=False, default=None)
    _model: Any = field(repr=False, default=None)

    @contextmanager
    def step(self, keys: Sequence[str], next_keys: Sequence[str] | None = None) -> Iterator[None]:
        """Cached residuals: use the bank entries `keys` (batch order) for the forward passes inside.

        `next_keys`, the next step's entries, are read in the background meanwhile.
        """
        if self.cache is None:
            raise BlockSkipError(f'handle.step() is for residuals.mode "cached"; this plan uses "{self.plan.residuals.mode}"')
        with self.cache.step(keys, next_keys):
            yield

    def verify(self, keys: Sequence[str], forward_kwargs: dict[str, Any], tolerance: float = 1e-3) -> float:
        """Recompute the leading spans online for `keys` and compare with the bank.

        Catches a bank built from other weights or other inputs. Needs the skipped weights
        (not `offload: "drop"`). Returns the largest relative difference; raises `BankError`
        above `tolerance`.
        """
        if self.cache is None or self.plan.offload == "drop":
            raise BlockSkipError("verify() needs cached residuals and the skipped weights (offload other than drop)")
        model = self._model()
        self.cache.recorded = {}
        try:
            with torch.no_grad(), self.cache.step(keys):
                model(**forward_kwargs)
                stored = self.cache._current
                worst = 0.0
                for span_index, outputs in self.cache.recorded.items():
                    for role in self.cache.spans[span_index]["roles"]:
                        expected = stored[f"{span_index}/{role}"].to(outputs[role])
                        error = float((outputs[role] - expected).norm() / expected.norm().clamp_min(1e-30))
                        worst = max(worst, error)
        finally:
            self.cache.recorded = None
        if worst > tolerance:
            raise BankError(
                f"bank entries {list(keys)[:4]} differ from a fresh computation by {worst:.2e} (relative), "
                f"above {tolerance:g}: the bank was built from other weights or other inputs"
            )
        return worst

    def skipped_block_names(self) -> list[str]:
        return [name for span in self.spans for name in span.block_names]

    def kept_block_names(self) -> list[str]:
        skipped = set(self.skipped_block_names())
        return [
            f"{block_list.name}.{index}"
            for block_list in self.layout
            for index in range(len(block_list))
            if f"{block_list.name}.{index}" not in skipped
        ]

    def save_plan(self, directory: str | Path) -> Path:
        """Write the plan as `blockskip_plan.json` in `directory` (beside a saved LoRA)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return self.plan.save(directory / "blockskip_plan.json")

    def summary(self) -> str:
        spans = ", ".join(f"{span.position} {span.list_name}[{span.start}:{span.stop}]" for span in self.spans)
        return (
            f"{self.layout.model_class}: {self.layout.num_blocks} blocks, skipping {self.split.leading} leading + "
            f"{self.split.trailing} trailing ({self.split.source}); spans: {spans or 'none'}; "
            f"residuals: {self.plan.residuals.mode}; offload: {self.plan.offload}"
        )


def _reject_lora(block: nn.Module, name: str) -> None:
    for parameter_name, _ in block.named_parameters():
        if "lora_" in parameter_name:
            raise BlockSkipError(
                f"{name}.{parameter_name} is a LoRA weight; call apply_block_skip before add_adapter, "
                "so that LoRA lands only in the kept blocks"
            )


def _has_no_data(block: nn.Module) -> bool:
    # blockskip-estimate: true for meta and fake tensors, whose blocks cannot (and need not) move.
    tensor = next(block.parameters(), None)
    return tensor is not None and (tensor.is_meta or type(tensor).__name__ == "FakeTensor")


def _first_parameter(model: nn.Module) -> torch.Tensor | None:
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def apply_block_skip(
    model: nn.Module, plan: BlockSkipPlan | dict | str | Path, *, schedule: Any = None
) -> BlockSkipHandle:
    """Skip the plan's leading and trailing blocks of `model`, in place. Returns the handle.

    `plan` may be a `BlockSkipPlan`, its dict, or the path of a plan file. Call this before
    `add_adapter` (so LoRA goes only into kept blocks) and before moving the model to the GPU
    (so skipped weights never get there). With cached residuals, `schedule` (the
    `TrainingSchedule` the bank was computed for, or its fingerprint) lets blockskip check that
    training will feed the inputs the bank expects.
    """
    plan = BlockSkipPlan.coerce(plan)
    if getattr(model, HANDLE_ATTRIBUTE, None) is not None:
        raise BlockSkipError(
            f"block skip is already applied to this {type(model).__name__}; call remove_block_skip first"
        )
    layout = get_layout(model)
    split = plan.resolve_skip(layout.model_class, layout.num_blocks)
    spans = skip_spans(layout, split)
    reference = _first_parameter(model)
    streamer = BlockStreamer(resident=plan.offload == "none")
    cache = _open_bank(model, plan, schedule) if plan.residuals.mode == "cached" else None

    originals: dict[str, nn.Module] = {}
    for span in spans:
        blocks = getattr(model, span.list_name)
        for index in range(span.start, span.stop):
            name = f"{span.list_name}.{index}"
            block_io_for(blocks[index])
            _reject_lora(blocks[index], name)
            originals[name] = blocks[index]

    for span_index, span in enumerate(spans):
        blocks = getattr(model, span.list_name)
        span_originals = [originals[name] for name in span.block_names]
        for offset, index in enumerate(range(span.start, span.stop)):
            original = span_originals[offset]
            following = span_originals[offset + 1] if offset + 1 < len(span_originals) else None
            # blockskip-estimate: meta/fake weights (the estimator's models) have nothing to move.
            if plan.offload == "cpu" and not _has_no_data(original):
                original.to("cpu")
                pin_block(original)
            slot = StandInSlot(
                original if plan.offload != "drop" else None,
                plan.residuals.mode,
                streamer,
                following if plan.offload != "drop" else None,
                span_index=span_index,
                position=span.position,
                first_in_span=offset == 0,
                last_in_span=offset == len(span) - 1,
                cache=cache,
            )
            blocks[index] = SkippedBlock(original, block_io_for(original), slot, f"{span.list_name}.{index}")
    if plan.offload == "drop":
        originals = {}  # nothing needs the skipped weights any more: let them be freed

    handle = BlockSkipHandle(
        plan=plan,
        layout=layout,
        split=split,
        spans=spans,
        originals=originals,
        model_device=reference.device if reference is not None else torch.device("cpu"),
        model_dtype=reference.dtype if reference is not None else torch.float32,
        cache=cache,
    )
    handle._model = weakref.ref(model)
    setattr(model, HANDLE_ATTRIBUTE, handle)
    return handle


def _open_bank(model: nn.Module, plan: BlockSkipPlan, schedule: Any) -> CachedResiduals:
    """Open the plan's bank and refuse it unless it was made for this model, these spans and this schedule."""
    reader = BankReader(plan.residuals.bank)
    manifest, where = reader.manifest, plan.residuals.bank
    fingerprint = model_fingerprint(model)
    if manifest["model"] != fingerprint:
        what = next(key for key in ("class", "config", "weights") if manifest["model"].get(key) != fingerprint[key])
        raise BankError(
            f"the bank at {where} was computed from another model: its {what} differs "
            f"({str(manifest['model'].get(what))[:16]}… vs {str(fingerprint[what])[:16]}…)"
        )
    expected = bank_spans(model, plan)
    if manifest["spans"] != expected:
        raise BankError(
            f"the bank at {where} holds spans {_span_text(manifest['spans'])}, but the plan skips {_span_text(expected)}"
        )
    schedule_hash = schedule.fingerprint() if hasattr(schedule, "fingerprint") else schedule
    if manifest["schedule"] is not None and schedule_hash is None:
        raise BankError(
            f"the bank at {where} was computed for schedule {manifest['schedule'][:12]}…; pass that schedule "
            "to apply_block_skip(..., schedule=...) so blockskip can check training uses it"
        )
    if manifest["schedule"] != schedule_hash and schedule_hash is not None:
        raise BankError(
            f"the bank at {where} was computed for schedule {str(manifest['schedule'])[:12]}…, "
            f"not for this one ({schedule_hash[:12]}…)"
        )
    return CachedResiduals(reader, model)  # model: its inputs are checked against the bank's


def _span_text(spans: list[dict]) -> str:
    return ", ".join(f"{span['list']}[{span['start']}:{span['stop']}]" for span in spans) or "none"


def get_block_skip(model: nn.Module) -> BlockSkipHandle | None:
    """The handle of the block skip applied to `model` (unwrapping DDP/compile), or None."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        handle = getattr(candidate, HANDLE_ATTRIBUTE, None) if candidate is not None else None
        if handle is not None:
            return handle
    return None


def remove_block_skip(model: nn.Module) -> nn.Module:
    """Put the original blocks back in place and return `model`.

    The originals follow the model: if it moved to another device or dtype since the skip was
    applied, they are moved the same way. Otherwise they come back untouched, and the model's
    outputs are bit-identical to those before `apply_block_skip`.
    """
    handle = getattr(model, HANDLE_ATTRIBUTE, None)
    if handle is None:
        raise BlockSkipError(f"no block skip is applied to this {type(model).__name__}")
    if handle.plan.offload == "drop":
        raise BlockSkipError('the plan dropped the skipped blocks (offload "drop"); load the model again to get them back')
    reference = _first_parameter(model)
    device = reference.device if reference is not None else handle.model_device
    dtype = reference.dtype if reference is not None else handle.model_dtype
    for name, original in handle.originals.items():
        list_name, index = name.rsplit(".", 1)
        blocks = getattr(model, list_name)
        stand_in = blocks[int(index)]
        if not isinstance(stand_in, SkippedBlock) or stand_in.slot.original is not original:
            raise BlockSkipError(f"{name} no longer holds blockskip's stand-in; the model was changed since apply")
        original.to(device)
        if dtype != handle.model_dtype:
            original.to(dtype)
        blocks[int(index)] = original
    if handle.cache is not None:
        handle.cache.close()
    delattr(model, HANDLE_ATTRIBUTE)
    return model


def iter_stand_ins(model: nn.Module) -> Iterable[SkippedBlock]:
    return (module for module in model.modules() if isinstance(module, SkippedBlock))


def describe_plan(model: nn.Module, plan: BlockSkipPlan) -> dict[str, Any]:
    """What `plan` would do to `model`, without changing it (for `blockskip inspect`)."""
    layout = get_layout(model)
    split = plan.resolve_skip(layout.model_class, layout.num_blocks)
    spans = skip_spans(layout, split)
    return {
        "model": layout.model_class,
        "num_blocks": layout.num_blocks,
        "leading": split.leading,
        "trailing": split.trailing,
        "source": split.source,
        "spans": [json.loads(json.dumps(span.__dict__)) for span in spans],
    }
