"""What a RALU sampling run does, as a small versioned record (saved and loaded like a plan).

Region-Adaptive Latent Upsampling (arXiv 2507.08422) samples in up to three stages: the whole
latent at half the side, then the edge regions at full side beside the rest at half, then all
of it at full side. Each stage has a number of model calls, the progress at which it ends
(0 = pure noise, 1 = clean; the last stage ends at 1) and the shift of its sigma grid; `noise_scale`
(the paper's Z) sets the correlated noise added at each resolution change.

    >>> settings = RALUSettings.preset("4x")
    >>> settings.steps, settings.stage_ends, settings.calls
    ((5, 6, 7), (0.3, 0.45, 1.0), 18)
    >>> RALUSettings.from_json(settings.to_json()) == settings
    True
    >>> RALUSettings.full_resolution(steps=28, shift=3.0).stages
    1
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1
EDGE_DETECTORS = ("canny", "gradient")

# The official code's FLUX.1-dev settings (github ignoww/RALU): steps per stage, stage ends, per-stage
# shifts and Z fitted by its timestep-distribution matching; region fraction 0.3 and 0.1.
_PRESETS = {
    "4x": dict(steps=(5, 6, 7), stage_ends=(0.3, 0.45, 1.0), shifts=(5.019, 2.589, 2.226), noise_scale=6.317, region_fraction=0.3),
    "7x": dict(steps=(2, 3, 5), stage_ends=(0.2, 0.3, 1.0), shifts=(8.141, 2.856, 2.193), noise_scale=6.261, region_fraction=0.1),
}


class RALUSettingsError(ValueError):
    """RALU settings that cannot describe a sampling run."""


@dataclass(frozen=True)
class RALUSettings:
    """Stages of a RALU run; one stage is plain full-resolution sampling, two skip the mixed stage.

    `shifts[k]` spaces stage k's sigmas as SD3/FLUX shift a schedule (σ = h·u / (1 + (h−1)·u), u
    evenly spaced). `region_fraction` is the share of low-resolution tokens (of image area) brought
    to full resolution in the mixed stage, chosen by `edge_detector` ("canny": Canny edges of the
    decoded estimate of the clean image, thresholds `edge_thresholds` on 0–255 grey; "gradient":
    Sobel magnitude of the latent estimate, no decoding).
    """

    steps: tuple[int, ...] = (5, 6, 7)
    stage_ends: tuple[float, ...] = (0.3, 0.45, 1.0)
    shifts: tuple[float, ...] = (5.019, 2.589, 2.226)
    noise_scale: float = 6.317
    region_fraction: float = 0.3
    edge_detector: str = "canny"
    edge_thresholds: tuple[float, float] = (100.0, 200.0)
    version: int = field(default=FORMAT_VERSION)

    def __post_init__(self):
        for name in ("steps", "stage_ends", "shifts", "edge_thresholds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @classmethod
    def preset(cls, name: str) -> RALUSettings:
        """The official FLUX.1-dev settings: "4x" (18 calls) or "7x" (10 calls)."""
        if name not in _PRESETS:
            raise RALUSettingsError(f"unknown RALU preset {name!r}; known: {sorted(_PRESETS)}")
        return cls(**_PRESETS[name])

    @classmethod
    def load(cls, preset_or_path: str) -> RALUSettings:
        """A preset name ("4x", "7x") or the path of a settings JSON file."""
        from pathlib import Path

        path = Path(preset_or_path)
        return cls.from_json(path.read_text()) if path.is_file() else cls.preset(preset_or_path)

    @classmethod
    def full_resolution(cls, steps: int, shift: float = 3.0) -> RALUSettings:
        """One full-resolution stage: the stock sampler's Euler steps on a shifted grid."""
        return cls(steps=(steps,), stage_ends=(1.0,), shifts=(shift,), region_fraction=0.0)

    @property
    def stages(self) -> int:
        return len(self.steps)

    @property
    def calls(self) -> int:
        """Model calls per image (per guidance branch)."""
        return sum(self.steps)

    def validate(self) -> None:
        problems = []
        if self.version != FORMAT_VERSION:
            problems.append(f"version {self.version} is not the supported {FORMAT_VERSION}")
        if not 1 <= len(self.steps) <= 3:
            problems.append(f"1 to 3 stages, got {len(self.steps)}")
        if not len(self.steps) == len(self.stage_ends) == len(self.shifts):
            problems.append(f"steps, stage_ends and shifts need one entry per stage, got {len(self.steps)}, {len(self.stage_ends)}, {len(self.shifts)}")
        if any(not isinstance(n, int) or n < 1 for n in self.steps):
            problems.append(f"steps must be positive integers, got {self.steps}")
        ends = self.stage_ends
        if ends and (ends[-1] != 1.0 or any(not 0 < a < b for a, b in zip(ends, ends[1:])) or not ends[0] > 0):
            problems.append(f"stage_ends must rise strictly inside (0, 1] and end at 1.0, got {ends}")
        if any(not (h > 0 and math.isfinite(h)) for h in self.shifts):
            problems.append(f"shifts must be positive, got {self.shifts}")
        if len(self.steps) > 1 and not self.noise_scale >= 2:
            problems.append(f"noise_scale (Z) must be at least 2 so the correlated noise exists, got {self.noise_scale}")
        if not 0 <= self.region_fraction <= 1:
            problems.append(f"region_fraction must lie in [0, 1], got {self.region_fraction}")
        if self.edge_detector not in EDGE_DETECTORS:
            problems.append(f"edge_detector must be one of {EDGE_DETECTORS}, got {self.edge_detector!r}")
        if len(self.edge_thresholds) != 2 or not 0 <= self.edge_thresholds[0] <= self.edge_thresholds[1]:
            problems.append(f"edge_thresholds must be (low, high) with 0 <= low <= high, got {self.edge_thresholds}")
        if problems:
            raise RALUSettingsError("invalid RALU settings: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RALUSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RALUSettingsError(f"RALU settings are not JSON: {error}") from None
        if not isinstance(data, dict):
            raise RALUSettingsError("RALU settings must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise RALUSettingsError(f"unknown RALU settings fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)
