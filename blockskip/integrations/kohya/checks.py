"""What cannot work with kohya's flux_train_network.py, refused before any model loads, with the reason.

`check_plan` runs on the plan alone; `check_args` on the script's parsed (and config-file-merged)
arguments, before `FluxNetworkTrainer.train` starts. Both run before the dataset, the text
encoders or the transformer are touched.

Example:
    >>> import argparse
    >>> from blockskip import BlockSkipPlan
    >>> check_args(argparse.Namespace(blocks_to_swap=18), BlockSkipPlan.from_dict({}), dynamic_patches=True)
    Traceback (most recent call last):
    ...
    blockskip.integrations.kohya.errors.KohyaAdapterError: --blocks_to_swap 18 cannot work with block skipping: ...
"""

from __future__ import annotations

import argparse

from ...skipping.plan import BlockSkipPlan
from .errors import KohyaAdapterError

SHIM_MODULE = "blockskip.integrations.kohya.lora_flux"
UPSTREAM_NETWORK_MODULE = "networks.lora_flux"


def check_plan(plan: BlockSkipPlan) -> None:
    """Refuse plan settings kohya's trainer cannot honour."""
    if plan.residuals.mode == "cached":
        raise KohyaAdapterError(
            'residuals.mode "cached" cannot work with kohya sd-scripts: a residual bank holds residuals for a fixed, '
            "seeded schedule of (sample, crop, timestep, noise), but FluxNetworkTrainer draws its noise with "
            "torch.randn_like inside get_noise_pred_and_target and its batches carry no stable sample keys. "
            'Use "online" (the default).'
        )
    if plan.kept_blocks.group_offload:
        raise KohyaAdapterError(
            "kept_blocks.group_offload is not available with kohya sd-scripts (its own offload, --blocks_to_swap, "
            "cannot be combined with block skipping); remove it from the plan, or make one with "
            "`blockskip plan ... --no-offload`."
        )
    if plan.kept_blocks.storage_dtype not in (None, "float8_e4m3fn"):
        raise KohyaAdapterError(
            f"kept_blocks.storage_dtype {plan.kept_blocks.storage_dtype!r}: kohya stores fp8 weights only as "
            "float8_e4m3fn (--fp8_base); use that or null."
        )


def check_args(args: argparse.Namespace, plan: BlockSkipPlan, dynamic_patches: bool) -> None:
    """Refuse script flags that cannot work with block skipping (called on the parsed arguments)."""
    swap = getattr(args, "blocks_to_swap", None)
    if swap:
        raise KohyaAdapterError(
            f"--blocks_to_swap {swap} cannot work with block skipping: kohya's block swapper moves blocks between "
            "CPU and GPU by position and requires every swapped slot to hold the same block class, but the "
            "skipped slots hold parameter-free stand-ins. Drop --blocks_to_swap: skipping already keeps the "
            "skipped blocks' weights off the GPU."
        )
    if getattr(args, "split_mode", False):
        raise KohyaAdapterError("--split_mode turns on --blocks_to_swap 18, which cannot work with block skipping; drop it.")
    if getattr(args, "cpu_offload_checkpointing", False):
        raise KohyaAdapterError(
            "--cpu_offload_checkpointing cannot work with block skipping: it moves every block's output to the CPU, "
            "so the skipped blocks' stand-ins would compute their residuals on the CPU. Use plain "
            "--gradient_checkpointing."
        )
    base_weights = getattr(args, "base_weights", None)
    if base_weights:
        raise KohyaAdapterError(
            f"--base_weights {' '.join(map(str, base_weights))}: merging a LoRA into the model after block skipping "
            "would change only the kept blocks, and the skipped blocks' residuals would come from unmerged weights. "
            "Merge it into the checkpoint first (networks/flux_merge_lora.py) and train on that."
        )
    model_type = getattr(args, "model_type", "flux")
    if model_type not in (None, "flux"):
        raise KohyaAdapterError(f"--model_type {model_type}: the kohya adapter supports FLUX.1 (--model_type flux) only")
    if getattr(args, "network_train_text_encoder_only", False):
        raise KohyaAdapterError(
            "--network_train_text_encoder_only trains no transformer block, so block skipping has nothing to do; "
            "run flux_train_network.py without blockskip."
        )
    _check_network_module(args)
    if plan.kept_blocks.gradient_checkpointing and not getattr(args, "gradient_checkpointing", False):
        raise KohyaAdapterError("the plan's kept_blocks.gradient_checkpointing is on: pass --gradient_checkpointing")
    fp8 = getattr(args, "fp8_base", False) or getattr(args, "fp8_base_unet", False)
    if plan.kept_blocks.storage_dtype == "float8_e4m3fn" and not fp8:
        raise KohyaAdapterError('the plan\'s kept_blocks.storage_dtype is "float8_e4m3fn": pass --fp8_base')
    if dynamic_patches:
        _check_dynamic_patches(args, plan)


def _check_network_module(args: argparse.Namespace) -> None:
    module = getattr(args, "network_module", None)
    if module == UPSTREAM_NETWORK_MODULE:
        args.network_module = SHIM_MODULE  # the shim wraps networks.lora_flux: same LoRA, same keys
    elif module != SHIM_MODULE:
        raise KohyaAdapterError(
            f"--network_module {module}: blockskip supports kohya's FLUX LoRA, --network_module {SHIM_MODULE} "
            f"(or {UPSTREAM_NETWORK_MODULE}, which it replaces by the shim)"
        )


def _check_dynamic_patches(args: argparse.Namespace, plan: BlockSkipPlan) -> None:
    if getattr(args, "masked_loss", False):
        raise KohyaAdapterError(
            "--masked_loss cannot work with dynamic patches: the masks would not follow the timestep-aware crops. "
            "Pass --blockskip_patches off to train with block skipping only."
        )
    resolution = getattr(args, "resolution", None)
    if resolution is None:
        return  # set per dataset in --dataset_config; checked on the dataset group
    sides = resolution if isinstance(resolution, (tuple, list)) else [int(v) for v in str(resolution).split(",")]
    if max(sides) != plan.patches.max_size:
        raise KohyaAdapterError(
            f"--resolution {resolution} does not match the plan's patches.max_size {plan.patches.max_size}: with "
            "dynamic patches the dataset must hand blockskip images of patches.max_size, which it crops at s(t) and "
            f"resizes to patches.min_size {plan.patches.min_size} (the training resolution). "
            f"Pass --resolution {plan.patches.max_size}, or --blockskip_patches off."
        )


def check_dataset_resolution(resolutions: list[tuple[int, int]], plan: BlockSkipPlan) -> None:
    """The per-dataset resolutions of a --dataset_config must also be patches.max_size."""
    for resolution in resolutions:
        if max(resolution) != plan.patches.max_size:
            raise KohyaAdapterError(
                f"a dataset has resolution {tuple(resolution)}, but the plan's patches.max_size is "
                f"{plan.patches.max_size}: set resolution = {plan.patches.max_size} in the dataset config, "
                "or pass --blockskip_patches off."
            )
