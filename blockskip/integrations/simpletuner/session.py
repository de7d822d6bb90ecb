"""What one adapted SimpleTuner run knows: the plan, the trainer's config, what was patched and done.

The hooks (`loading`, `targets`, `batches`, `saving`) share one `TrainingSession`; the runner
creates it, the hooks fill it in as SimpleTuner reaches them, and the runner reports from it.

Example:
    >>> from blockskip import BlockSkipPlan
    >>> session = TrainingSession(BlockSkipPlan.from_dict({"skip": {"leading": 1}}), verbose=False)
    >>> session.dynamic_patches, session.steps, session.handle is None
    (True, 0, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...skipping.plan import BlockSkipPlan
from ...skipping.skip import BlockSkipHandle
from ..messages import log_line
from .families import TrainerFamily


@dataclass
class TrainingSession:
    plan: BlockSkipPlan
    dynamic_patches: bool = True
    trainer: Any = None  # SimpleTuner's Trainer
    config: Any = None  # SimpleTuner's parsed config (an argparse namespace), once the Trainer has it
    family: TrainerFamily | None = None
    handle: BlockSkipHandle | None = None
    registered_blocks: list[str] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)  # what add_lora_adapter was given
    dropped_targets: list[str] = field(default_factory=list)  # upstream targets outside the kept blocks
    collator: Any = None  # the LatentPatchCollator cropping each batch's latents
    steps: int = 0  # prepare_batch calls answered with blockskip's crops and noise levels
    last_batch: dict[str, Any] | None = None  # what the last prepared batch used (for logs and tests)
    plan_files: list[Path] = field(default_factory=list)
    verbose: bool = True
    ralu: Any = None  # RALUSettings for validation images (--blockskip_ralu), or None
    ralu_pipelines: list[Any] = field(default_factory=list)  # pipelines RALU was applied to

    def log(self, message: str) -> None:
        """One line on stderr, from the local main process only."""
        log_line(message, self.verbose)
