"""Timestep samplers as JSON and as short command-line specs.

A `TrainingSchedule` saved to `schedule.json` must rebuild the very sampler it was made with, or
its noise levels (and so its bank) change. Samplers are frozen dataclasses, so a sampler is
stored as its class name and fields; `ShiftedSampler` nests its base sampler.

The command line takes `NAME` or `NAME:key=value,...` with the names of
`blockskip.crops.timesteps.make_sampler`, and `shift=` to wrap the sampler in a `ShiftedSampler`.

Example:
    >>> sampler = parse_sampler("logit_normal:mean=0.5,std=1,shift=3")
    >>> sampler_to_dict(sampler)
    {'class': 'ShiftedSampler', 'base': {'class': 'LogitNormalSampler', 'mean': 0.5, 'std': 1.0}, 'shift': 3.0}
    >>> sampler_from_dict(sampler_to_dict(sampler)) == sampler
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import timesteps
from .timesteps import TimestepSampler, make_sampler

# The sampler classes a schedule file may name; anything else is refused rather than guessed.
SAMPLER_CLASSES = ("UniformSampler", "LogitNormalSampler", "SigmoidSampler", "ModeSampler", "ShiftedSampler")


def sampler_to_dict(sampler: TimestepSampler) -> dict[str, Any]:
    """`{"class": ..., **fields}` for one of the samplers of `blockskip.crops.timesteps`."""
    name = type(sampler).__name__
    if name not in SAMPLER_CLASSES or not dataclasses.is_dataclass(sampler):
        raise ValueError(
            f"cannot save a {name} to a schedule file; use one of {', '.join(SAMPLER_CLASSES)} "
            "(or build the TrainingSchedule in code on both sides)"
        )
    fields = {}
    for field in dataclasses.fields(sampler):
        value = getattr(sampler, field.name)
        fields[field.name] = sampler_to_dict(value) if isinstance(value, TimestepSampler) else value
    return {"class": name, **fields}


def sampler_from_dict(data: dict[str, Any]) -> TimestepSampler:
    """The sampler `sampler_to_dict` described."""
    if not isinstance(data, dict) or data.get("class") not in SAMPLER_CLASSES:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLER_CLASSES)}, got {data!r}")
    fields = {key: value for key, value in data.items() if key != "class"}
    if "base" in fields:
        fields["base"] = sampler_from_dict(fields["base"])
    try:
        return getattr(timesteps, data["class"])(**fields)
    except TypeError as error:
        raise ValueError(f"sampler: {error}") from error


def parse_sampler(text: str) -> TimestepSampler:
    """A sampler from `NAME` or `NAME:key=value,...` (numbers only), e.g. `logit_normal:mean=0,std=1`."""
    name, _, rest = text.partition(":")
    params: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        try:
            if not equals:
                raise ValueError
            params[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"sampler {text!r}: expected key=value pairs with numbers, got {item!r}") from None
    shift = params.pop("shift", None)
    try:
        return make_sampler(name.strip(), shift=shift, **params)
    except TypeError as error:
        raise ValueError(f"sampler {text!r}: {error}") from error
