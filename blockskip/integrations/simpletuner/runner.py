"""Run SimpleTuner's own training in this process with blockskip patched in, and undo it all afterwards.

`run_training(config, plan)` builds `simpletuner.helpers.training.trainer.Trainer(config=config)`
(SimpleTuner parses and validates the config; no model loads), refuses what cannot work
(`checks`), wraps four methods of the trainer's model family object (`trainer.model`, e.g. `Flux`)
— `load_model`, `get_lora_target_layers`, `prepare_batch`, `save_lora_weights`, as instance
attributes — and calls `trainer.run()`, SimpleTuner's own in-process training entry. The wrappers
are removed when `run()` returns or raises.

`config=None` lets SimpleTuner find its configuration as `simpletuner train` does: the
`CONFIG_BACKEND` / `CONFIG_PATH` / `ENV` variables, `config/config.json`, or (with
`CONFIG_BACKEND=cmd`) `sys.argv`. The command line (`python -m blockskip.integrations.simpletuner`)
sets those for you.

Example (with SimpleTuner installed and a real model):

    from blockskip.integrations.simpletuner import run_training
    run_training({"--model_family": "flux", "--model_type": "lora", "--output_dir": "out", ...}, plan="plan.json")
"""

from __future__ import annotations

import os
from typing import Any

from ...skipping.plan import BlockSkipPlan
from ..flags import read_ralu_flag
from ..patching import Patches
from .batches import install_batch_hook
from .checks import check_config, check_plan
from .errors import SimpleTunerAdapterError
from .families import family_for
from .loading import install_loading_hook
from .saving import install_saving_hook
from .session import TrainingSession
from .targets import install_target_hook
from .validation import install_ralu_hook, remove_ralu_from_pipelines

TRAINER_MODULE = "simpletuner.helpers.training.trainer"


def run_training(
    config: dict[str, Any] | None,
    plan: BlockSkipPlan | dict | str | os.PathLike,
    *,
    dynamic_patches: bool = True,
    verbose: bool = True,
    ralu: str | None = None,
) -> TrainingSession:
    """Train with SimpleTuner's `Trainer(config=config).run()`, with block skipping (and dynamic patches).

    `ralu` (a RALU preset or settings file) samples the validation images with RALU.

    Returns the session: the trainer, the block-skip handle, what the last batch used, the plan
    files written. Every patch is undone when training returns or raises.
    """
    plan = BlockSkipPlan.coerce(plan)
    check_plan(plan)
    trainer_class = _trainer_class()
    session = TrainingSession(plan, dynamic_patches=dynamic_patches, verbose=verbose,
                              ralu=read_ralu_flag(ralu, SimpleTunerAdapterError) if ralu is not None else None)
    trainer = trainer_class(config=config)
    session.trainer, session.config = trainer, getattr(trainer, "config", None)
    if session.config is None:
        raise SimpleTunerAdapterError("SimpleTuner's Trainer parsed no configuration")
    check_config(session.config, plan)
    session.family = family_for(session.config.model_family)
    family_model = getattr(trainer, "model", None)
    if family_model is None:
        raise SimpleTunerAdapterError(f"SimpleTuner built no model family object for {session.config.model_family!r}")
    with Patches() as patches:
        install_loading_hook(patches, family_model, session)
        install_target_hook(patches, family_model, session)
        install_saving_hook(patches, family_model, session)
        if dynamic_patches:
            install_batch_hook(patches, family_model, session)
        if session.ralu is not None:
            install_ralu_hook(patches, family_model, session)
        try:
            trainer.run()
        finally:
            remove_ralu_from_pipelines(session)
    _check_the_run(session)
    return session


def _trainer_class() -> type:
    import importlib

    try:
        module = importlib.import_module(TRAINER_MODULE)
    except ImportError as error:
        raise SimpleTunerAdapterError(
            f"SimpleTuner is not importable here ({error}); install it (pip install simpletuner, Python >= 3.12)"
        ) from error
    return module.Trainer


def _check_the_run(session: TrainingSession) -> None:
    """Refuse to call a run good when SimpleTuner never reached what the adapter patches."""
    if session.handle is None:
        raise SimpleTunerAdapterError("SimpleTuner never loaded its transformer through load_model(); nothing was skipped")
    if session.dynamic_patches and session.steps == 0:
        session.log("warning: no batch was prepared: no training step ran")
    session.log(
        f"done: {session.steps} batches on blockskip's crops and noise levels, {len(session.plan_files)} plan file(s) written"
        if session.dynamic_patches
        else f"done: block skipping only (no dynamic patches), {len(session.plan_files)} plan file(s) written"
    )


def describe(session: TrainingSession) -> dict[str, Any]:
    """A short summary of what the adapter did (for logs and tests)."""
    return {
        "family": session.family.model_family if session.family else None,
        "skipped_blocks": session.handle.skipped_block_names() if session.handle else [],
        "registered_blocks": session.registered_blocks,
        "lora_targets": len(session.lora_targets),
        "dropped_targets": session.dropped_targets,
        "dynamic_patches": session.dynamic_patches,
        "steps_with_blockskip_crops": session.steps,
        "plan_files": [str(path) for path in session.plan_files],
    }
