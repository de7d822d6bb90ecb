"""`--blockskip_ralu` for SimpleTuner: validation images are sampled with RALU.

SimpleTuner's validation asks the model family object for its pipeline,
`ModelFoundation.get_pipeline(pipeline_type, load_base_model)`, and calls it. The adapter wraps
that method on the family object (an instance attribute, removed afterwards): a text-to-image
`FluxPipeline` it returns gets RALU applied once. SimpleTuner's own pipeline fork works too,
because RALU reads the token grid from the pipeline's starting latents. Other pipeline types
(img2img validation, ControlNet) are left alone with a log line. After training, RALU is removed
from every pipeline it was applied to.
"""

from __future__ import annotations

import functools
from typing import Any

from ...sampling.pipelines import SUPPORTED, apply_ralu, remove_ralu
from ..patching import Patches
from .session import TrainingSession

_APPLIED = "_blockskip_ralu"


def install_ralu_hook(patches: Patches, family_model: Any, session: TrainingSession) -> None:
    """Wrap `family_model.get_pipeline` so its FLUX pipeline samples with RALU (undone with `patches`)."""
    original = family_model.get_pipeline

    @functools.wraps(original)
    def get_pipeline(*args: Any, **kwargs: Any):
        pipeline = original(*args, **kwargs)
        if pipeline is None or getattr(pipeline, _APPLIED, None) is not None:
            return pipeline
        name = type(pipeline).__name__
        if name not in SUPPORTED:
            session.log(f"validation with {name}: RALU supports {' and '.join(SUPPORTED)}, sampling as usual")
            return pipeline
        apply_ralu(pipeline, session.ralu)
        session.ralu_pipelines.append(pipeline)
        session.log(f"validation with RALU: {session.ralu.stages} stages, {session.ralu.calls} model calls")
        return pipeline

    patches.set(family_model, "get_pipeline", get_pipeline)


def remove_ralu_from_pipelines(session: TrainingSession) -> None:
    """Give back stock pipelines (SimpleTuner caches them on the family object)."""
    while session.ralu_pipelines:
        remove_ralu(session.ralu_pipelines.pop())
