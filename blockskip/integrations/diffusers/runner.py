"""Run an upstream training script as `__main__` with blockskip patched in, and undo it all afterwards.

Example (with a real script and pipeline):

    from blockskip.integrations.diffusers import run_script
    run_script("train_dreambooth_lora_flux.py", ["--pretrained_model_name_or_path", "black-forest-labs/FLUX.1-dev",
               "--instance_data_dir", "dog", "--instance_prompt", "a photo of sks dog", "--resolution", "512"],
               plan="plan.json")
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Sequence
from typing import Any

from ...skipping.plan import BlockSkipPlan
from ..flags import read_ralu_flag
from ..patching import Patches
from ..scripts import as_script, script_path
from .arguments import install_argument_hook
from .checks import check_plan
from .data import install_data_hook
from .density import install_density_hook
from .errors import ScriptAdapterError
from .loading import install_loading_hook
from .saving import install_saving_hook
from .session import ScriptSession


def run_script(
    script: str | os.PathLike,
    script_args: Sequence[str],
    plan: BlockSkipPlan | dict | str | os.PathLike,
    *,
    dynamic_patches: bool = True,
    verbose: bool = True,
    ralu: str | None = None,
) -> ScriptSession:
    """Run `script` with `script_args` as `__main__`, with block skipping (and dynamic patches) patched in.

    `ralu` (a RALU preset or settings file) samples the script's validation images with RALU.
    Returns the session: the script's parsed `args`, the block-skip handles, the plan files
    written. Every patch is undone when the script returns or raises.
    """
    plan = BlockSkipPlan.coerce(plan)
    check_plan(plan)
    script = script_path(script, ScriptAdapterError)
    session = ScriptSession(plan, dynamic_patches=dynamic_patches, script=script, verbose=verbose,
                            ralu=read_ralu_flag(ralu, ScriptAdapterError) if ralu is not None else None)
    with Patches() as patches, as_script(script, script_args):
        install_argument_hook(patches, session)
        install_loading_hook(patches, session)
        install_saving_hook(patches, session)
        if dynamic_patches:
            install_data_hook(patches, session)
            install_density_hook(patches, session)
        runpy.run_path(str(script), run_name="__main__")
    _check_the_run(session)
    if session.args is not None:
        summary = describe(session)
        steps = (
            f"{summary['steps_with_blockskip_timesteps']} steps on blockskip's crops and timesteps"
            if session.dynamic_patches
            else "block skipping only (no dynamic patches)"
        )
        session.log(f"done: {steps}, {len(summary['plan_files'])} plan file(s) written")
    return session


def _check_the_run(session: ScriptSession) -> None:
    """Refuse to call a run good when the script never reached what the adapter patches."""
    if session.args is None:
        return  # the script exited before parsing (--help): nothing ran
    if not session.handles:
        raise ScriptAdapterError(
            "the script never loaded a supported transformer with from_pretrained(..., subfolder='transformer'); "
            "nothing was skipped"
        )
    if session.dynamic_patches and session.collate is not None and session.draws_supplied == 0:
        _warn(session, "the training loop never asked for timesteps: no training step ran")


def _warn(session: ScriptSession, message: str) -> None:
    session.log(f"warning: {message}")


def describe(session: ScriptSession) -> dict[str, Any]:
    """A short summary of what the adapter did (for logs and tests)."""
    return {
        "family": session.family.transformer_class if session.family else None,
        "skipped_blocks": session.handles[-1].skipped_block_names() if session.handles else [],
        "dynamic_patches": session.dynamic_patches,
        "steps_with_blockskip_timesteps": session.draws_supplied,
        "plan_files": [str(path) for path in session.plan_files],
    }
