"""Keep a kohya LoRA network honest about skipped blocks, and record the plan with every save.

`restrict_block_indices` turns the skip into `networks.lora_flux`'s own
`train_double_block_indices` / `train_single_block_indices` (refusing a selection that names a
skipped block). `guard_network` wraps one network instance's `save_weights` and `load_weights`:
saving refuses keys in skipped blocks, adds the plan to the safetensors metadata
(`ss_blockskip_plan`, `ss_blockskip_skipped_blocks`) and writes `blockskip_plan.json` beside the
file; loading refuses weights for skipped blocks, which `load_state_dict(strict=False)` would
otherwise drop without a word.

Keys keep the full model's indices (`lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight`),
so the file loads into the unskipped model with kohya's and ComfyUI's loaders as it is.

Example:
    >>> parse_block_selection("0-2,5", 8)
    [0, 1, 2, 5]
    >>> format_block_selection([3, 4, 6])
    '3,4,6'
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...skipping.skip import BlockSkipHandle
from .errors import KohyaAdapterError

LORA_PREFIX = "lora_unet"
_SELECTIONS = {"double_blocks": "train_double_block_indices", "single_blocks": "train_single_block_indices"}
_GUARDED = "_blockskip_guarded"


def parse_block_selection(selection: str, total: int) -> list[int]:
    """kohya's block selection syntax (`all`, `none`, `0-3,7`) as sorted indices."""
    selection = str(selection).strip()
    if selection == "all":
        return list(range(total))
    if selection in ("none", ""):
        return []
    chosen: set[int] = set()
    for part in selection.split(","):
        start, _, end = part.strip().partition("-")
        first, last = int(start), int(end or start)
        if not 0 <= first <= last < total:
            raise KohyaAdapterError(f"block selection {selection!r}: {part.strip()!r} is outside 0-{total - 1}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def format_block_selection(indices: Iterable[int]) -> str:
    indices = sorted(indices)
    return ",".join(map(str, indices)) if indices else "none"


def _indices(names: Iterable[str], list_name: str) -> list[int]:
    return [int(name.rsplit(".", 1)[1]) for name in names if name.rsplit(".", 1)[0] == list_name]


def restrict_block_indices(handle: BlockSkipHandle, network_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`network_kwargs` with the block selections limited to kept blocks."""
    kwargs = dict(network_kwargs)
    kept, skipped = handle.kept_block_names(), set(handle.skipped_block_names())
    for block_list in handle.layout:
        key = _SELECTIONS.get(block_list.name)
        if key is None:
            continue
        kept_here = _indices(kept, block_list.name)
        given = kwargs.get(key)
        if given is None or str(given).strip() == "all":
            kwargs[key] = format_block_selection(kept_here)
            continue
        chosen = parse_block_selection(given, len(block_list))
        named_skipped = [i for i in chosen if f"{block_list.name}.{i}" in skipped]
        if named_skipped:
            raise KohyaAdapterError(
                f"network_args {key}={given} names {block_list.name} {format_block_selection(named_skipped)}, "
                f"which the plan skips; the kept {block_list.name} are {format_block_selection(kept_here)}"
            )
        kwargs[key] = format_block_selection(chosen)
    return kwargs


def skipped_key_prefixes(handle: BlockSkipHandle) -> tuple[str, ...]:
    """`lora_unet_double_blocks_3_`-style prefixes of every skipped block."""
    return tuple(f"{LORA_PREFIX}_{name.replace('.', '_')}_" for name in handle.skipped_block_names())


def check_no_skipped_keys(keys: Iterable[str], handle: BlockSkipHandle, what: str) -> None:
    prefixes = skipped_key_prefixes(handle)
    bad = sorted(key for key in keys if key.startswith(prefixes))
    if bad:
        raise KohyaAdapterError(
            f"{what} has {len(bad)} weights in skipped blocks ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "skipped blocks carry no LoRA"
        )


def _load_keys(file: str | os.PathLike) -> list[str]:
    if os.path.splitext(str(file))[1] == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as opened:
            return list(opened.keys())
    import torch

    try:  # weights_only: never unpickle code, whatever torch version kohya pins
        return list(torch.load(file, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as error:
        raise KohyaAdapterError(f"the LoRA {file} holds more than tensors (pickled objects), so it is not loaded: {error}") from None


def guard_network(network: Any, handle: BlockSkipHandle) -> Any:
    """Wrap `network.save_weights` / `load_weights` (this instance only; idempotent)."""
    if getattr(network, _GUARDED, False):
        return network
    save_weights, load_weights = network.save_weights, network.load_weights
    plan_json = json.dumps(handle.plan.to_dict(), sort_keys=True)
    skipped = ",".join(handle.skipped_block_names())

    @functools.wraps(save_weights)
    def guarded_save_weights(file, dtype, metadata):
        check_no_skipped_keys(network.state_dict().keys(), handle, "the LoRA to save")
        if metadata is not None:
            metadata = {**metadata, "ss_blockskip_plan": plan_json, "ss_blockskip_skipped_blocks": skipped}
        result = save_weights(file, dtype, metadata)
        handle.save_plan(Path(file).parent)
        return result

    @functools.wraps(load_weights)
    def guarded_load_weights(file):
        check_no_skipped_keys(_load_keys(file), handle, f"the LoRA {file}")
        return load_weights(file)

    network.save_weights = guarded_save_weights
    network.load_weights = guarded_load_weights
    setattr(network, _GUARDED, True)
    return network
