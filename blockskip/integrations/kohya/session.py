"""What one adapted kohya run knows: the plan, the parsed arguments, the skip handle, what happened.

The runner creates a `KohyaSession`; the trainer subclass fills it in as `train()` reaches each
hook, and the runner reports from it when training ends.

Example:
    >>> from blockskip import BlockSkipPlan
    >>> session = KohyaSession(BlockSkipPlan.from_dict({"model": {"class": "FluxTransformer2DModel"}}), verbose=False)
    >>> session.model_plan.model.class_name, session.dynamic_patches
    ('Flux', True)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...skipping.plan import BlockSkipPlan
from ...skipping.skip import BlockSkipHandle
from ..messages import log_line
from .crops import BatchCrops
from .layout import kohya_plan, register_kohya_flux


@dataclass
class KohyaSession:
    plan: BlockSkipPlan  # as the user gave it
    dynamic_patches: bool = True
    script: Path | None = None
    args: argparse.Namespace | None = None  # the script's parsed (and config-merged) arguments
    handle: BlockSkipHandle | None = None
    crops: BatchCrops | None = None
    steps_at_blockskip_levels: int = 0  # get_noise_pred_and_target calls noised at blockskip's levels
    verbose: bool = True
    ralu: Any = None  # RALUSettings for sample images (--blockskip_ralu), or None
    model_plan: BlockSkipPlan = field(init=False)  # the plan as it applies to kohya's Flux

    def __post_init__(self) -> None:
        register_kohya_flux()
        self.model_plan = kohya_plan(self.plan)

    def log(self, message: str) -> None:
        """One line on stderr, from the local main process only."""
        log_line(message, self.verbose)
