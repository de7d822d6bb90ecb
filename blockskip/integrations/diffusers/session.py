"""What one adapted script run knows: the plan, the script's parsed arguments, what was patched.

The hooks (`arguments`, `loading`, `data`, `density`, `saving`, `validation`) share one
`ScriptSession`; the runner creates it, the hooks fill it in as the script reaches them, and the
runner reports from it when the script ends.

Example:
    >>> from blockskip import BlockSkipPlan
    >>> session = ScriptSession(BlockSkipPlan.from_dict({"skip": {"leading": 1}}))
    >>> session.dynamic_patches, session.weight_dtype() is None
    (True, True)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...skipping.plan import BlockSkipPlan
from ...skipping.skip import BlockSkipHandle
from ..messages import log_line
from .families import ScriptFamily

_MIXED_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ScriptSession:
    plan: BlockSkipPlan
    dynamic_patches: bool = True
    script: Path | None = None
    args: argparse.Namespace | None = None  # the script's own parsed arguments, once it has parsed them
    family: ScriptFamily | None = None
    handles: list[BlockSkipHandle] = field(default_factory=list)
    collate: Any = None  # the DreamBoothPatchCollate installed in the training DataLoader
    density_args: dict[str, Any] | None = None  # the script flags the collator's timestep sampler follows
    draws_supplied: int = 0  # calls of compute_density_for_timestep_sampling answered from a batch
    plan_files: list[Path] = field(default_factory=list)
    verbose: bool = True
    ralu: Any = None  # RALUSettings for validation images (--blockskip_ralu), or None

    def log(self, message: str) -> None:
        """One line on stderr, from the local main process only."""
        log_line(message, self.verbose)

    def weight_dtype(self) -> torch.dtype | None:
        """The dtype the script will cast its transformer to (`--mixed_precision`, else accelerate's config).

        Accelerator resolves `mixed_precision=None` from `ACCELERATE_MIXED_PRECISION`, which
        `accelerate launch` sets from its config; the scripts then cast the frozen transformer to it.
        """
        value = getattr(self.args, "mixed_precision", None) if self.args is not None else None
        if value is None:
            value = os.environ.get("ACCELERATE_MIXED_PRECISION")
        return _MIXED_PRECISION_DTYPES.get(value)
