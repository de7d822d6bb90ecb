"""`--network_module blockskip.integrations.kohya.lora_flux`: kohya's FLUX LoRA on the kept blocks only.

A thin wrapper of sd-scripts' own `networks.lora_flux` (imported from the sd-scripts checkout on
`sys.path` when first used): the same `LoRANetwork`, the same module names and file format. It

- passes `train_double_block_indices` / `train_single_block_indices` limited to the kept blocks
  (a selection in `--network_args` that names a skipped block is refused);
- guards the network's `save_weights` / `load_weights` (see `guard`): no keys in skipped blocks,
  the plan in the file's metadata and in `blockskip_plan.json` beside it.

Everything else (`LoRANetwork`, `LoRAModule`, ...) is `networks.lora_flux`'s, looked up on demand.
Needs a model that the kohya entry point has skipped (`python -m blockskip.integrations.kohya
flux_train_network.py --blockskip_plan PLAN ...`); `--network_module networks.lora_flux` is
replaced by this module there.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...skipping.skip import get_block_skip
from .errors import KohyaAdapterError
from .guard import check_no_skipped_keys, guard_network, restrict_block_indices

UPSTREAM = "networks.lora_flux"


def _upstream():
    try:
        return importlib.import_module(UPSTREAM)
    except ImportError as error:
        raise KohyaAdapterError(
            f"cannot import {UPSTREAM} ({error}); run from an sd-scripts checkout (or put it on sys.path)"
        ) from error


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, ae: Any,
                   text_encoders: Any, flux: Any, neuron_dropout: float | None = None, **kwargs: Any):
    """`networks.lora_flux.create_network` on the kept blocks of a skipped `flux`."""
    handle = get_block_skip(flux)
    if handle is None:
        raise KohyaAdapterError(
            f"--network_module {__name__} needs a FLUX model with block skipping applied: run "
            "`python -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN ...`"
        )
    kwargs = restrict_block_indices(handle, kwargs)
    network = _upstream().create_network(
        multiplier, network_dim, network_alpha, ae, text_encoders, flux, neuron_dropout=neuron_dropout, **kwargs
    )
    return guard_network(network, handle)


def create_network_from_weights(multiplier: float, file: Any, ae: Any, text_encoders: Any, flux: Any,
                                weights_sd: Any = None, for_inference: bool = False, **kwargs: Any):
    """`networks.lora_flux.create_network_from_weights`; on a skipped model, refuses weights for skipped blocks."""
    network, weights_sd = _upstream().create_network_from_weights(
        multiplier, file, ae, text_encoders, flux, weights_sd=weights_sd, for_inference=for_inference, **kwargs
    )
    handle = get_block_skip(flux) if flux is not None else None
    if handle is not None:
        check_no_skipped_keys(weights_sd.keys(), handle, f"the LoRA {file}")
        guard_network(network, handle)
    return network, weights_sd


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        upstream = importlib.import_module(UPSTREAM)
    except ImportError as error:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} ({UPSTREAM}: {error})") from None
    return getattr(upstream, name)
