"""Put a DynamicPatchCollator in front of the script's own collate function.

The scripts build `DataLoader(DreamBoothDataset(...), collate_fn=lambda examples:
collate_fn(examples, args.with_prior_preservation))`. Their dataset resizes and crops every image
to `--resolution` once, at init; with dynamic patches `--resolution` must be the plan's
`patches.max_size` (checked when the script parses its arguments), so the dataset hands out
`max_size` squares. For each batch, `DreamBoothPatchCollate`

1. draws a noise level per example and crops `instance_images` (and `class_images`, with prior
   preservation) at `s(t)`, resized to `patches.min_size` — the training resolution;
2. calls the script's own collate function on the cropped examples, unchanged;
3. adds the collator's `noise_level`, `timesteps`, `timestep_u`, `crop_box` and `source_size`,
   in the order of the script's `pixel_values` (instances, then class images).

`timestep_u` is what `density.py` hands back to the loop as its `u`. The timestep table comes from
the script's own scheduler config (`FlowMatchEulerDiscreteScheduler.from_pretrained(...,
subfolder="scheduler")`, as the scripts load it), the density from its `--weighting_scheme`,
`--logit_mean`, `--logit_std` and `--mode_scale`.

Example:
    >>> import torch
    >>> from blockskip import DynamicPatchCollator
    >>> script_collate = lambda examples: {"pixel_values": torch.stack([e["instance_images"] for e in examples]),
    ...                                    "prompts": [e["instance_prompt"] for e in examples]}
    >>> collate = DreamBoothPatchCollate(script_collate, DynamicPatchCollator(min_size=32, max_size=64, seed=0))
    >>> batch = collate([{"instance_images": torch.rand(3, 64, 64) * 2 - 1, "instance_prompt": "sks dog"}] * 2)
    >>> batch["pixel_values"].shape, batch["timestep_u"].shape, batch["prompts"]
    (torch.Size([2, 3, 32, 32]), torch.Size([2]), ['sks dog', 'sks dog'])
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ...crops.collator import DynamicPatchCollator
from ...crops.conventions import TimestepConvention
from ...crops.timesteps import sampler_from_diffusers_args
from ..patching import Patches
from .errors import ScriptAdapterError
from .session import ScriptSession

IMAGE_KEYS = ("instance_images", "class_images")  # the scripts' collate concatenates them in this order
BATCH_KEYS = ("noise_level", "timesteps", "timestep_input", "timestep_u", "crop_box", "source_size")
DATASET_CLASS = "DreamBoothDataset"
DENSITY_FLAGS = {"weighting_scheme": "none", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29}


class DreamBoothPatchCollate:
    """Crop each image at `s(t)` with `collator`, then run the script's `collate_fn` on the crops."""

    def __init__(self, script_collate: Callable[[list], Mapping[str, Any]], collator: DynamicPatchCollator):
        self.script_collate = script_collate
        self.collator = collator

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]
        parts = []
        for key in IMAGE_KEYS:
            if not all(key in example for example in examples):
                continue
            part = self.collator([example[key] for example in examples])
            for example, crop in zip(examples, part["pixel_values"]):
                example[key] = crop
            parts.append(part)
        if not parts:
            raise ScriptAdapterError(f"the training examples have none of {IMAGE_KEYS} (keys: {sorted(examples[0])})")
        batch = dict(self.script_collate(examples))
        pixels = batch.get("pixel_values")
        # with prior preservation the collate appends the class crops; without, it ignores them
        used = next((n for n in range(len(parts), 0, -1) if pixels is not None and len(pixels) == len(examples) * n), 0)
        expected = torch.cat([part["pixel_values"] for part in parts[:used]]) if used else None
        if expected is None or pixels.shape != expected.shape or not torch.equal(pixels.float(), expected):
            raise ScriptAdapterError(
                "the script's collate_fn did not return the cropped images as pixel_values (instances first, then "
                "class images); blockskip cannot tell which noise level belongs to which image"
            )
        for name in BATCH_KEYS:
            if name in parts[0]:
                batch[name] = torch.cat([part[name] for part in parts[:used]])
        return batch


def build_collator(session: ScriptSession) -> DynamicPatchCollator:
    """The DynamicPatchCollator for this script: the plan's patches, the script's density and scheduler table."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    args = session.args
    density = {name: getattr(args, name, default) for name, default in DENSITY_FLAGS.items()}
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="scheduler", revision=getattr(args, "revision", None)
    )
    family = session.family
    convention = TimestepConvention.from_scheduler(
        scheduler,
        name=family.convention if family is not None else "diffusers",
        model_scale=family.model_scale if family is not None else 1.0,
    )
    session.density_args = density
    granularity = session.plan.patches.multiple_of
    if granularity is None and family is not None and "Sana" in family.transformer_class:
        granularity = 32  # DC-AE 32x: the plan's model check may not name the class
    return DynamicPatchCollator(
        session.plan, multiple_of=granularity, sampler=sampler_from_diffusers_args(**density), convention=convention
    )


def install_data_hook(patches: Patches, session: ScriptSession) -> None:
    """Wrap `DataLoader.__init__` so the script's DreamBooth data loader collates with blockskip."""
    original = DataLoader.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        dataset, collate = bound.arguments.get("dataset"), bound.arguments.get("collate_fn")
        if type(dataset).__name__ == DATASET_CLASS and not isinstance(collate, DreamBoothPatchCollate):
            if session.args is None:
                raise ScriptAdapterError("the script built its DreamBooth data loader before parsing its arguments")
            if session.collate is None:
                session.collate = DreamBoothPatchCollate(
                    collate or torch.utils.data.default_collate, build_collator(session)
                )
                patches_ = session.plan.patches
                session.log(
                    f"dynamic patches: {patches_.schedule} crops from {patches_.max_size} px squares, trained at "
                    f"{patches_.min_size} px; timesteps from the collator ({session.density_args['weighting_scheme']})"
                )
            bound.arguments["collate_fn"] = session.collate
        original(*bound.args, **bound.kwargs)

    patches.set(DataLoader, "__init__", __init__)
