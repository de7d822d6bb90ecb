"""`FluxNetworkTrainer` with block skipping and dynamic patches: a subclass made at run time.

sd-scripts' trainer is a class with one method per stage, so the adapter subclasses the script's
own `FluxNetworkTrainer` (whatever the loaded checkout defines) and overrides five of them:

- `assert_extra_args`: the per-dataset resolutions of a `--dataset_config` match the plan;
- `load_target_model`: the loaded `Flux` gets `apply_block_skip` (before `create_network`, so
  the LoRA lands only in kept blocks, and before the model moves to the GPU, so skipped weights
  never get there); the stand-ins answer `enable_gradient_checkpointing` by doing nothing
  (they save no activations: their blocks run under `no_grad`);
- `process_batch` (training only): the batch's images, or cached latents, are cropped at each
  sample's noise level (`crops.BatchCrops`) before kohya encodes them;
- `get_noise_pred_and_target`: noised at those levels (`noise.at_noise_levels`);
- `sample_images`: with residuals "none", sample on the full model
  (`blockskip.integrations.full_model`); with `--blockskip_ralu`, denoise with RALU (`.ralu`).

Everything else, the loop included, is the script's own.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from torch import nn

from ...skipping.skip import apply_block_skip, iter_stand_ins
from ..full_model import full_model
from .checks import check_dataset_resolution
from .crops import NOISE_LEVEL_KEY, BatchCrops
from .density import kohya_sampler
from .errors import KohyaAdapterError
from .layout import MODEL_CLASS
from .noise import at_noise_levels
from .ralu import sampling_with_ralu
from .session import KohyaSession


def _no_checkpointing(*args: Any, **kwargs: Any) -> None:
    return None


def skip_kohya_flux(model: nn.Module, session: KohyaSession) -> None:
    """Apply the session's plan to kohya's `Flux` (in place) and record the handle."""
    if type(model).__name__ != MODEL_CLASS:
        raise KohyaAdapterError(
            f"load_target_model returned a {type(model).__name__}; the kohya adapter skips blocks of FLUX.1 "
            f"({MODEL_CLASS}) only"
        )
    if getattr(model, "blocks_to_swap", None):
        raise KohyaAdapterError(f"block swap is enabled on the model (blocks_to_swap={model.blocks_to_swap})")
    session.handle = apply_block_skip(model, session.model_plan)
    for stand_in in iter_stand_ins(model):
        stand_in.enable_gradient_checkpointing = _no_checkpointing
        stand_in.disable_gradient_checkpointing = _no_checkpointing
    session.log(session.handle.summary())


def make_trainer_class(script: ModuleType, session: KohyaSession) -> type:
    """A subclass of `script.FluxNetworkTrainer` that trains with the session's plan."""
    base = getattr(script, "FluxNetworkTrainer", None)
    flux_train_utils = getattr(script, "flux_train_utils", None)
    if base is None or flux_train_utils is None:
        raise KohyaAdapterError(
            f"{getattr(script, '__file__', script)} defines no FluxNetworkTrainer / imports no flux_train_utils: "
            "run flux_train_network.py from sd-scripts"
        )

    class BlockSkipFluxNetworkTrainer(base):
        def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
            super().assert_extra_args(args, train_dataset_group, val_dataset_group)
            if session.dynamic_patches:
                groups = [group for group in (train_dataset_group, val_dataset_group) if group is not None]
                resolutions = [
                    tuple(dataset.resolution)
                    for group in groups
                    for dataset in getattr(group, "datasets", [])
                    if getattr(dataset, "resolution", None) is not None
                ]
                check_dataset_resolution(resolutions, session.plan)
                if getattr(args, "cache_latents", False) or getattr(args, "cache_latents_to_disk", False):
                    session.log("latents are cached: crops are taken from the latents (see docs/patches.md)")

        def load_target_model(self, args, weight_dtype, accelerator):
            loaded = super().load_target_model(args, weight_dtype, accelerator)
            skip_kohya_flux(loaded[-1], session)
            return loaded

        def process_batch(self, batch, *args, is_train=True, **kwargs):
            if is_train and session.crops is not None:
                batch = session.crops(batch)
            return super().process_batch(batch, *args, is_train=is_train, **kwargs)

        def get_noise_pred_and_target(self, args, accelerator, noise_scheduler, latents, batch, *rest, **kwargs):
            levels = batch.get(NOISE_LEVEL_KEY) if isinstance(batch, dict) else None
            if levels is None:
                return super().get_noise_pred_and_target(args, accelerator, noise_scheduler, latents, batch, *rest, **kwargs)
            with at_noise_levels(flux_train_utils, levels):
                result = super().get_noise_pred_and_target(
                    args, accelerator, noise_scheduler, latents, batch, *rest, **kwargs
                )
            session.steps_at_blockskip_levels += 1
            return result

        def sample_images(self, accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux):
            if session.ralu is not None:
                with sampling_with_ralu(flux_train_utils, session.ralu, ae, session.log):
                    return self._sample_images(accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux)
            return self._sample_images(accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux)

        def _sample_images(self, accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux):
            call = super().sample_images
            if session.model_plan.residuals.mode == "online":
                return call(accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux)
            if any(block.slot.original is None for block in iter_stand_ins(flux)):
                session.log('sampling skipped: with residuals "none" and offload "drop" the full model is gone')
                return None
            with full_model(flux, KohyaAdapterError):
                return call(accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux)

    BlockSkipFluxNetworkTrainer.__qualname__ = BlockSkipFluxNetworkTrainer.__name__
    if session.dynamic_patches and session.args is not None:
        session.crops = BatchCrops(session.model_plan, kohya_sampler(session.args, session.model_plan.patches.min_size))
    return BlockSkipFluxNetworkTrainer
