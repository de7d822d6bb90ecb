"""TrainingSchedule: every step of a training run, decided up front from a seed.

A cached residual depends on the exact model input: the image, the crop, the noise level, the
noise and the caption. The paper's cached mode therefore fixes the whole run in advance. A
schedule says, for each step and batch row, which sample is drawn, its noise level, its crop box
and the seed of its noise. The precompute and the training loop read the same schedule, through
the same `DynamicPatchCollator` (`schedule.dataset(...)` puts the noise level, crop box and bank
key into every example) and the same noise (`schedule.noise(...)`), so a bank entry always meets
the input it was computed from.

Example:
    >>> schedule = TrainingSchedule([(64, 64)] * 3, steps=2, batch_size=2, patches=PatchSchedule(32, 64, 16), seed=0)
    >>> [entry.key for entry in schedule.step(1)]
    ['s000001b0', 's000001b1']
    >>> schedule.step(1) == TrainingSchedule([(64, 64)] * 3, 2, 2, PatchSchedule(32, 64, 16), seed=0).step(1)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..crops.patches import PatchSchedule, resolve_patch_schedule, working_size
from ..crops.timesteps import TimestepSampler, UniformSampler
from .fingerprint import canonical_hash


@dataclass(frozen=True)
class ScheduleEntry:
    """One batch row of one step."""

    key: str  # the bank entry key
    step: int
    row: int
    sample_index: int
    noise_level: float  # 1 = pure noise
    crop_box: tuple[int, int, int, int]  # (top, left, height, width) in the working image's pixels
    noise_seed: int


def _generator(*words: int) -> torch.Generator:
    state = np.random.SeedSequence([int(word) % 2**63 for word in words]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class TrainingSchedule:
    """The seeded plan of a training run: samples, noise levels, crop boxes and noise seeds.

    Args:
        image_sizes: `(height, width)` of every dataset sample, in dataset order.
        steps, batch_size: the run's length and batch.
        patches: a plan, its `PatchSettings`, or a `PatchSchedule`.
        seed: the run's seed.
        sampler: noise-level sampler (default uniform on [0, 1]).

    Samples are drawn epoch by epoch, each epoch a seeded permutation of the dataset.
    """

    def __init__(
        self,
        image_sizes: Sequence[tuple[int, int]],
        steps: int,
        batch_size: int,
        patches: Any = None,
        *,
        seed: int = 0,
        sampler: TimestepSampler | None = None,
    ):
        if not image_sizes:
            raise ValueError("a schedule needs at least one sample")
        self.image_sizes = [tuple(int(side) for side in size) for size in image_sizes]
        self.steps, self.batch_size, self.seed = int(steps), int(batch_size), int(seed)
        self.patches = patches if isinstance(patches, PatchSchedule) else resolve_patch_schedule(patches)
        self.sampler = sampler if sampler is not None else UniformSampler()
        self._permutations: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.steps

    def _sample_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.image_sizes))
        if epoch not in self._permutations:
            order = torch.randperm(len(self.image_sizes), generator=_generator(self.seed, epoch, 0))
            self._permutations[epoch] = order.tolist()
        return self._permutations[epoch][offset]

    def entry(self, step: int, row: int) -> ScheduleEntry:
        if not (0 <= step < self.steps and 0 <= row < self.batch_size):
            raise IndexError(f"step {step}, row {row} is outside the schedule ({self.steps} × {self.batch_size})")
        sample = self._sample_index(step * self.batch_size + row)
        generator = _generator(self.seed, step, row, 1)
        noise_level = float(self.sampler.sample(1, generator)[0])
        height, width = working_size(*self.image_sizes[sample], self.patches.min_size)
        box = self.patches.crop_box(height, width, noise_level, generator)
        noise_seed = int(torch.randint(2**62, (), generator=generator))
        return ScheduleEntry(f"s{step:06d}b{row}", step, row, sample, noise_level, box, noise_seed)

    def step(self, step: int) -> list[ScheduleEntry]:
        """The batch of `step`, row by row."""
        return [self.entry(step, row) for row in range(self.batch_size)]

    def keys(self, step: int) -> list[str]:
        return [entry.key for entry in self.step(step)]

    def __iter__(self) -> Iterator[list[ScheduleEntry]]:
        return (self.step(step) for step in range(self.steps))

    def fingerprint(self) -> str:
        """A hash of everything that decides the schedule; recorded in the residual bank."""
        patches = self.patches
        return canonical_hash(
            {
                "seed": self.seed,
                "steps": self.steps,
                "batch_size": self.batch_size,
                "image_sizes": self.image_sizes,
                "patches": [patches.min_size, patches.max_size, patches.multiple_of, patches.schedule, patches.fixed_size],
                "sampler": repr(self.sampler),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The schedule's arguments as JSON-ready data; `from_dict` rebuilds the same schedule.

        >>> s = TrainingSchedule([(64, 48)], 3, 1, PatchSchedule(32, 64, 16), seed=5)
        >>> TrainingSchedule.from_dict(s.to_dict()).fingerprint() == s.fingerprint()
        True
        """
        from ..crops.sampler_spec import sampler_to_dict

        return {
            "format": "blockskip.schedule",
            "version": 1,
            "seed": self.seed,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "image_sizes": [list(size) for size in self.image_sizes],
            "patches": {
                "min_size": self.patches.min_size,
                "max_size": self.patches.max_size,
                "multiple_of": self.patches.multiple_of,
                "schedule": self.patches.schedule,
                "fixed_size": self.patches.fixed_size,
            },
            "sampler": sampler_to_dict(self.sampler),
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSchedule:
        """The schedule `to_dict` described; refuses data whose recorded fingerprint it cannot reproduce."""
        from ..crops.sampler_spec import sampler_from_dict

        if not isinstance(data, dict) or data.get("format") != "blockskip.schedule" or data.get("version") != 1:
            raise ValueError("not a blockskip schedule (expected format 'blockskip.schedule', version 1)")
        missing = [k for k in ("seed", "steps", "batch_size", "image_sizes", "patches", "sampler") if k not in data]
        if missing:
            raise ValueError(f"schedule data lacks {', '.join(missing)}")
        schedule = cls(
            [tuple(size) for size in data["image_sizes"]], data["steps"], data["batch_size"],
            PatchSchedule(**data["patches"]), seed=data["seed"], sampler=sampler_from_dict(data["sampler"]),
        )
        recorded = data.get("fingerprint")
        if recorded is not None and recorded != schedule.fingerprint():
            raise ValueError(
                f"schedule data says fingerprint {recorded[:12]}…, but rebuilds as {schedule.fingerprint()[:12]}…: "
                "it was edited, or written by another version of blockskip"
            )
        return schedule

    @staticmethod
    def noise(
        entries: Sequence[ScheduleEntry], shape: Sequence[int], dtype=torch.float32, device: Any = "cpu"
    ) -> torch.Tensor:
        """The noise of a batch (`len(entries)` × `shape`), the same on every device and every call."""
        rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(e.noise_seed)) for e in entries]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def dataset(self, base: Dataset, image_key: str = "image") -> "ScheduledDataset":
        """`base` in schedule order, each example carrying its noise level, crop box and bank key."""
        return ScheduledDataset(base, self, image_key)


class ScheduledDataset(Dataset):
    """A dataset whose item `i` is row `i % batch_size` of step `i // batch_size` of a schedule.

    Load it with `DataLoader(dataset, batch_size=schedule.batch_size, shuffle=False,
    collate_fn=DynamicPatchCollator(...))`: the collator takes the noise level and crop box from
    each example, and the batch's `blockskip_key` lists the bank keys.
    """

    def __init__(self, base: Dataset, schedule: TrainingSchedule, image_key: str = "image"):
        if len(base) != len(schedule.image_sizes):
            raise ValueError(f"the dataset has {len(base)} samples, the schedule was made for {len(schedule.image_sizes)}")
        self.base, self.schedule, self.image_key = base, schedule, image_key

    def __len__(self) -> int:
        return self.schedule.steps * self.schedule.batch_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.schedule.entry(*divmod(index, self.schedule.batch_size))
        example = self.base[entry.sample_index]
        example = dict(example) if isinstance(example, dict) else {self.image_key: example}
        example.update(noise_level=entry.noise_level, crop_box=list(entry.crop_box), blockskip_key=entry.key)
        return example
