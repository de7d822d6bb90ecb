"""`--blockskip_ralu`: the scripts' validation images are sampled with RALU.

The DreamBooth-LoRA scripts render validation images through a module-level
`log_validation(pipeline, ...)`. With the flag, that function is wrapped: RALU is applied to the
pipeline it is given for the duration of the call and removed afterwards, so the pipeline the
script keeps (and saves) is the stock one. Intermediate and final validation both use it. The
settings are read and the script's pipeline class checked when the transformer loads, before any
training step, so a wrong flag costs nothing.

    >>> def log_validation(pipeline, args, accelerator, pipeline_args, epoch, torch_dtype, is_final_validation=False):
    ...     return type(pipeline.__dict__.get("scheduler")).__name__
    >>> script_globals = {"log_validation": log_validation}
    >>> sample_with_ralu(script_globals, RALUSettings.preset("7x"), "FluxPipeline", lambda message: None)
    >>> getattr(script_globals["log_validation"], "__wrapped__") is log_validation
    True
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from ...sampling import RALUSettings
from ...sampling.pipelines import SUPPORTED, apply_ralu, remove_ralu
from .errors import ScriptAdapterError

_WRAPPED = "_blockskip_ralu_validation"


def sample_with_ralu(script_globals: dict, settings: RALUSettings, pipeline_class: str, log: Callable[[str], None]) -> None:
    """Wrap the script's `log_validation` so the pipeline it receives samples with RALU."""
    if pipeline_class not in SUPPORTED:
        raise ScriptAdapterError(f"--blockskip_ralu: RALU supports {' and '.join(SUPPORTED)}; this script validates with {pipeline_class}")
    original = script_globals.get("log_validation")
    if not callable(original):
        raise ScriptAdapterError("--blockskip_ralu: the script has no log_validation(pipeline, ...) to sample with RALU")
    if getattr(original, _WRAPPED, False):
        return
    signature = inspect.signature(original)
    if "pipeline" not in signature.parameters:
        raise ScriptAdapterError("--blockskip_ralu: the script's log_validation takes no `pipeline` argument")

    @functools.wraps(original)
    def log_validation(*args: Any, **kwargs: Any):
        pipeline = signature.bind(*args, **kwargs).arguments["pipeline"]
        log(f"validation with RALU: {settings.stages} stages, {settings.calls} model calls")
        apply_ralu(pipeline, settings)
        try:
            return original(*args, **kwargs)
        finally:
            remove_ralu(pipeline)

    setattr(log_validation, _WRAPPED, True)
    script_globals["log_validation"] = log_validation
