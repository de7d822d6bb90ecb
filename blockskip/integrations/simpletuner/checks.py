"""What cannot work with SimpleTuner, refused before any model loads, with the reason.

`check_plan` runs before SimpleTuner starts; `check_config` runs on SimpleTuner's parsed config
(`Trainer.config`) right after the `Trainer` is built, before `run()` loads anything.

Example:
    >>> import argparse
    >>> from blockskip import BlockSkipPlan
    >>> config = argparse.Namespace(model_family="flux", model_type="lora", lora_type="standard", tread_config="t.json")
    >>> check_config(config, BlockSkipPlan.from_dict({}))
    Traceback (most recent call last):
    ...
    blockskip.integrations.simpletuner.errors.SimpleTunerAdapterError: --tread_config 't.json' cannot be combined with blockskip: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...skipping.plan import BlockSkipPlan
from .errors import SimpleTunerAdapterError
from .families import family_for

_UNSET = (None, "", "None", "none", False, 0, "0", "false", "False")


def _set(value: Any) -> bool:
    return value not in _UNSET


# (option, is it in use?, why it cannot be combined)
_REFUSED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("tread_config", _set, "TREAD routes tokens around a range of blocks inside the model's own block loop, "
     "where blockskip's stand-ins sit; the two have not been made to agree"),
    ("diffusion_blocks_config", _set, "DiffusionBlocks trains one block group per step with its own timestep ranges "
     "and its own block loop; it replaces the block structure blockskip relies on"),
    ("musubi_blocks_to_swap", _set, "musubi block swap moves whole blocks between CPU and GPU around each block's "
     "forward and expects real blocks in every slot; blockskip already keeps the skipped blocks' weights on the CPU"),
    ("ramtorch", _set, "RamTorch replaces the transformer's Linear layers with CPU-resident ones at load time, "
     "before blockskip can take the skipped blocks out"),
    ("crepa_enabled", _set, "CREPA reads hidden states of a chosen block, which may be a skipped one"),
    ("layersync_enabled", _set, "LayerSync regularises hidden states of chosen blocks, which may be skipped ones"),
    ("mixflow_enabled", _set, "MixFlow noises the latents at another time than the model's timestep; the crop is "
     "made for one noise level"),
    ("scheduled_sampling_max_step_offset", _set, "scheduled sampling rolls the model out over other timesteps than "
     "the one each crop was made for"),
    ("distillation_method", _set, "distillation runs teacher passes blockskip has not been tested with"),
    ("controlnet", _set, "ControlNet training trains another network; blockskip skips blocks of the base model"),
    ("control", _set, "Control training feeds conditioning latents that blockskip would have to crop alongside"),
)


def check_plan(plan: BlockSkipPlan) -> None:
    """Refuse plan settings the SimpleTuner adapter cannot honour."""
    mode = plan.residuals.mode
    if mode == "cached":
        raise SimpleTunerAdapterError(
            'residuals.mode "cached" cannot work with SimpleTuner: a residual bank holds residuals for a fixed, '
            "seeded schedule of (sample, crop, timestep, noise), but SimpleTuner picks its samples (aspect buckets, "
            'repeats) and draws noise itself. Use "online" (the default).'
        )
    if mode == "none":
        raise SimpleTunerAdapterError(
            'residuals.mode "none" (naive skipping, the ablation baseline) is refused with SimpleTuner: it validates '
            "on the training transformer, which without residuals is not the model being trained for. "
            'Use "online" (the default), or run ablations with blockskip directly.'
        )
    kept = plan.kept_blocks
    if kept.storage_dtype is not None or kept.group_offload:
        raise SimpleTunerAdapterError(
            "kept_blocks.storage_dtype and kept_blocks.group_offload are not applied by the SimpleTuner adapter; "
            "remove them from the plan and use SimpleTuner's own --base_model_precision (e.g. int8-quanto) and "
            "--gradient_checkpointing."
        )


def check_config(config: Any, plan: BlockSkipPlan) -> None:
    """Refuse SimpleTuner options that cannot work with blockskip (called on `Trainer.config`)."""
    family_for(getattr(config, "model_family", None))
    model_type = getattr(config, "model_type", "lora")
    if model_type != "lora":
        raise SimpleTunerAdapterError(
            f"--model_type {model_type!r}: blockskip trains LoRA on the kept blocks only; a full fine-tune would save "
            "a model whose skipped blocks are stand-ins. Use --model_type lora."
        )
    lora_type = str(getattr(config, "lora_type", "standard")).lower()
    if lora_type != "standard":
        raise SimpleTunerAdapterError(
            f"--lora_type {lora_type!r} is not supported with blockskip (untested: LyCORIS wraps modules by class and "
            "saves its own key names). Use --lora_type standard (PEFT LoRA)."
        )
    for name, in_use, why in _REFUSED:
        value = getattr(config, name, None)
        if in_use(value):
            raise SimpleTunerAdapterError(f"--{name} {value!r} cannot be combined with blockskip: {why}.")
    flavour = getattr(config, "model_flavour", None)
    if flavour == "kontext":
        raise SimpleTunerAdapterError(
            "--model_flavour kontext trains on conditioning latents that blockskip would have to crop alongside "
            "the target; refused."
        )
    _check_precision(config)
    if plan.kept_blocks.gradient_checkpointing and not getattr(config, "gradient_checkpointing", False):
        raise SimpleTunerAdapterError(
            "the plan asks for kept_blocks.gradient_checkpointing, which SimpleTuner controls itself: pass "
            "--gradient_checkpointing (or set it false in the plan)."
        )


def _check_precision(config: Any) -> None:
    precision = str(getattr(config, "base_model_precision", "no_change") or "no_change")
    pipeline = getattr(config, "quantize_via", None) == "pipeline" or _set(getattr(config, "quantization_config", None))
    path = str(getattr(config, "pretrained_transformer_model_name_or_path", None) or "")
    if path.endswith(".gguf"):
        raise SimpleTunerAdapterError(f"a GGUF transformer ({path}) is quantized while it loads; blockskip cannot "
                                      "take the skipped blocks out of it. Use a diffusers or safetensors checkpoint.")
    quantized_after_load = precision == "no_change" or precision.endswith(("-quanto", "-torchao"))
    if pipeline or not quantized_after_load:
        raise SimpleTunerAdapterError(
            f"--base_model_precision {precision!r}{' with --quantize_via pipeline' if pipeline else ''} quantizes "
            "the transformer while it loads, before blockskip can move the skipped blocks out (untested). Use "
            "no_change or a quanto/torchao preset (e.g. int8-quanto), which quantize the kept blocks after loading."
        )
