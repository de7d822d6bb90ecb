"""LoRA on a skipped model: which modules to target, and saving the adapter with its plan.

PEFT's `add_adapter` already puts LoRA only into kept blocks, because stand-ins hold no Linear
layers. Trainers that pass explicit module lists get them from `lora_target_modules`.

`save_lora` writes the weights with the plan in their metadata (`lora_files`), and replacing the
weights file is the save's one commit point.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import apply_block_skip
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, {"skip": {"leading": 3, "trailing": 1}})
    >>> lora_target_modules(model, ["to_q"])
    ['single_transformer_blocks.1.attn.to_q', 'single_transformer_blocks.2.attn.to_q']
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .lora_files import LORA_WEIGHT_NAME, PLAN_METADATA_KEY
from .skip import BlockSkipError, get_block_skip

SCRATCH_PREFIX = ".blockskip-save-"


def lora_target_modules(model: nn.Module, suffixes: Iterable[str] | None = None) -> list[str]:
    """Qualified names of the Linear layers in kept blocks, optionally only those ending in a suffix.

    Suffixes match whole name components (`"to_q"` matches `attn.to_q`, not `attn.add_to_q`).
    Layers outside the block lists (embedders, output head) are never returned.
    """
    handle = get_block_skip(model)
    if handle is None:
        raise BlockSkipError("lora_target_modules needs a model with apply_block_skip applied")
    return block_linear_names(model, handle.kept_block_names(), suffixes)


def block_linear_names(model: nn.Module, block_names: Iterable[str], suffixes: Iterable[str] | None = None) -> list[str]:
    """Qualified names of the Linear layers inside `block_names`, matched by suffix as in `lora_target_modules`."""
    suffixes = list(suffixes) if suffixes is not None else None
    names = []
    for block_name in block_names:
        block = model.get_submodule(block_name)
        for module_name, module in block.named_modules():
            if not isinstance(module, nn.Linear) or not module_name:
                continue
            if suffixes is None or any(module_name == s or module_name.endswith("." + s) for s in suffixes):
                names.append(f"{block_name}.{module_name}")
    return names


def save_lora(model: nn.Module, directory: str | Path, adapter_name: str = "default") -> Path:
    """Save the model's LoRA with diffusers' own `save_lora_adapter`, and the plan beside it.

    The weights keep the full model's key names, so `load_lora_adapter` on the unskipped model, or
    a pipeline's `load_lora_weights`, loads them with no conversion. The save is atomic: until the
    weights file is replaced in one rename, `directory` holds the previous LoRA untouched.
    """
    handle = get_block_skip(model)
    if handle is None:
        raise BlockSkipError("save_lora needs a model with apply_block_skip applied; use save_lora_adapter otherwise")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for scratch in directory.glob(f"{SCRATCH_PREFIX}*"):  # left by a save that was killed
        shutil.rmtree(scratch, ignore_errors=True)
    plan_json = json.dumps(handle.plan.to_dict(), sort_keys=True)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=directory) as scratch:
        with _quiet_dtype_cast_warning():
            model.save_lora_adapter(scratch, adapter_name=adapter_name, weight_name=LORA_WEIGHT_NAME)
        written = Path(scratch) / LORA_WEIGHT_NAME
        with safe_open(str(written), framework="pt") as opened:
            tensors = {key: opened.get_tensor(key) for key in opened.keys()}
            metadata = dict(opened.metadata() or {})
        staged = Path(scratch) / "staged.safetensors"
        save_file(tensors, str(staged), metadata={**metadata, PLAN_METADATA_KEY: plan_json})
        _fsync(staged)
        os.replace(staged, directory / LORA_WEIGHT_NAME)  # the commit point
    handle.save_plan(directory)
    return directory


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


@contextmanager
def _quiet_dtype_cast_warning() -> Iterator[None]:
    """`save_lora_adapter` calls `model.to(dtype=None)`, which diffusers reports as a cast that may
    break fp32 modules; nothing is cast, so that one logger is quiet while it runs."""
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = modeling_logger.level
    modeling_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        modeling_logger.setLevel(level)
