"""Run sd-scripts' flux_train_network.py with blockskip, and leave nothing patched afterwards.

The script is imported as a module (its `if __name__ == "__main__"` block does not run) from its
checkout, with the checkout first on `sys.path` as `python flux_train_network.py` would have it.
`run_training` then does what that block does — `setup_parser()`, `parse_args`,
`train_util.verify_command_line_training_args`, `train_util.read_config_from_file` — checks the
result, and calls `train(args)` on a subclass of the script's `FluxNetworkTrainer` (see
`trainer`). `sys.argv`, `sys.path` and the script's `sys.modules` entry are restored afterwards.

Example (with a real checkout and models):

    from blockskip.integrations.kohya import run_training
    run_training("sd-scripts/flux_train_network.py", ["--pretrained_model_name_or_path", "flux1-dev.safetensors",
                 "--network_module", "networks.lora_flux", "--resolution", "512", ...], plan="plan.json")
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from ...skipping.plan import BlockSkipPlan
from ..flags import read_ralu_flag
from ..scripts import as_script, script_path
from .checks import check_args, check_plan
from .errors import KohyaAdapterError
from .session import KohyaSession
from .trainer import make_trainer_class


def run_training(
    script: str | os.PathLike,
    script_args: Sequence[str],
    plan: BlockSkipPlan | dict | str | os.PathLike,
    *,
    dynamic_patches: bool = True,
    verbose: bool = True,
    ralu: str | None = None,
) -> KohyaSession:
    """Train with `script` (flux_train_network.py) and `script_args`, block skipping and dynamic patches on.

    `ralu` (a RALU preset or settings file) denoises the run's sample images with RALU.

    Returns the session: parsed `args`, the skip `handle`, counters. Refusals (`KohyaAdapterError`)
    come before any model loads.
    """
    plan = BlockSkipPlan.coerce(plan)
    check_plan(plan)
    script = script_path(script, KohyaAdapterError)
    session = KohyaSession(plan, dynamic_patches=dynamic_patches, script=script, verbose=verbose,
                           ralu=read_ralu_flag(ralu, KohyaAdapterError) if ralu is not None else None)
    with _as_script(script, script_args):
        module = _import_script(script)
        parser = module.setup_parser()
        args = parser.parse_args(list(script_args))
        module.train_util.verify_command_line_training_args(args)
        args = module.train_util.read_config_from_file(args, parser)
        check_args(args, plan, dynamic_patches)
        session.args = args
        trainer = make_trainer_class(module, session)()
        trainer.train(args)
    _check_the_run(session)
    session.log(f"done: {describe(session)['summary']}")
    return session


@contextmanager
def _as_script(script: Path, script_args: Sequence[str]) -> Iterator[None]:
    """`sys.argv`, `sys.path[0]` and `sys.modules[stem]` as for `python script.py args...`, restored after."""
    saved_module = sys.modules.get(script.stem)
    try:
        with as_script(script, script_args):
            yield
    finally:
        if saved_module is None:
            sys.modules.pop(script.stem, None)
        else:
            sys.modules[script.stem] = saved_module


def _import_script(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module
    spec.loader.exec_module(module)
    for name in ("setup_parser", "train_util"):
        if not hasattr(module, name):
            raise KohyaAdapterError(f"{script} has no {name}: this is not sd-scripts' flux_train_network.py")
    return module


def _check_the_run(session: KohyaSession) -> None:
    if session.handle is None:
        raise KohyaAdapterError("the trainer never loaded a FLUX model; nothing was skipped")
    if session.crops is not None and session.steps_at_blockskip_levels == 0:
        session.log("warning: no training step ran at blockskip's noise levels")


def describe(session: KohyaSession) -> dict[str, Any]:
    """A short summary of what the adapter did (for logs and tests)."""
    skipped = session.handle.skipped_block_names() if session.handle else []
    steps = session.steps_at_blockskip_levels
    summary = f"{len(skipped)} blocks skipped, " + (
        f"{steps} steps on blockskip's crops and noise levels" if session.crops else "no dynamic patches"
    )
    return {
        "skipped_blocks": skipped,
        "kept_blocks": session.handle.kept_block_names() if session.handle else [],
        "dynamic_patches": session.dynamic_patches,
        "steps_at_blockskip_levels": steps,
        "summary": summary,
    }
