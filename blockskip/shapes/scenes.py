"""Procedural scenes: one to three patterned shapes on a background, with captions built from the attributes.

Every scene is a handful of named attributes, so a caption can say exactly what is in the image and
a classifier can be trained to read the attributes back. Rendering is deterministic: the same
`Scene` always gives the same pixels. Shapes are drawn at twice the resolution and averaged down,
so edges are anti-aliased.

Objects are listed left to right, and so is the caption; each object reads
`<size> <colour> <pattern> <accent> <shape>` (no accent for `solid`), then the background:

    >>> import torch
    >>> scene = sample_scene(torch.Generator().manual_seed(0))
    >>> caption(scene)
    'large black striped cyan square large red striped blue triangle small red solid cross on speckled teal'
    >>> render(scene).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32

COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.20, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
BACKGROUNDS = {
    "gray": (0.45, 0.45, 0.45),
    "navy": (0.10, 0.12, 0.38),
    "olive": (0.38, 0.38, 0.10),
    "maroon": (0.38, 0.08, 0.12),
    "teal": (0.05, 0.32, 0.32),
    "beige": (0.75, 0.70, 0.55),
}
TEXTURES = ("plain", "speckled")
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
PATTERNS = ("solid", "striped", "checkered", "twotone")
SIZES = {"small": (3.5, 5.0), "large": (7.0, 10.0)}  # radius range in pixels at IMAGE_SIZE
MAX_OBJECTS = 3
VOCABULARY = tuple(dict.fromkeys([*SIZES, *COLOURS, *PATTERNS, *SHAPES, "on", *TEXTURES[1:], *BACKGROUNDS]))


@dataclass(frozen=True)
class Thing:
    """One object: what it is (`identity`) and where it is drawn."""

    shape: str
    colour: str
    pattern: str
    accent: str | None  # second colour of a patterned object; None when solid
    size: str
    x: float  # centre, pixels
    y: float
    radius: float

    @property
    def identity(self) -> tuple[str, str, str, str | None]:
        return (self.shape, self.colour, self.pattern, self.accent)


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str
    texture: str
    seed: int  # texture noise

    def __post_init__(self):
        object.__setattr__(self, "things", tuple(sorted(self.things, key=lambda thing: thing.x)))


@dataclass(frozen=True)
class Subject:
    """A held-out identity bound to a rare token for personalization."""

    name: str
    shape: str
    colour: str
    pattern: str
    accent: str

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.pattern, self.accent)


# Ten identities pretraining never draws (checked by `sample_scene`), each with internal structure.
HELD_OUT_SUBJECTS = (
    Subject("subject0", "circle", "red", "striped", "yellow"),
    Subject("subject1", "square", "blue", "checkered", "white"),
    Subject("subject2", "triangle", "green", "twotone", "magenta"),
    Subject("subject3", "ring", "magenta", "striped", "cyan"),
    Subject("subject4", "cross", "yellow", "checkered", "blue"),
    Subject("subject5", "diamond", "cyan", "twotone", "red"),
    Subject("subject6", "circle", "white", "checkered", "black"),
    Subject("subject7", "square", "red", "twotone", "green"),
    Subject("subject8", "triangle", "yellow", "striped", "black"),
    Subject("subject9", "diamond", "magenta", "checkered", "green"),
)
_HELD_OUT = {subject.identity for subject in HELD_OUT_SUBJECTS}


def _choice(options, generator: torch.Generator):
    options = tuple(options)
    return options[int(torch.randint(len(options), (), generator=generator))]


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_identity(generator: torch.Generator, held_out: bool = False) -> tuple[str, str, str, str | None]:
    """A random (shape, colour, pattern, accent); never a held-out subject unless `held_out`."""
    while True:
        shape, colour, pattern = _choice(SHAPES, generator), _choice(COLOURS, generator), _choice(PATTERNS, generator)
        accent = None if pattern == "solid" else _choice([c for c in COLOURS if c != colour], generator)
        if held_out or (shape, colour, pattern, accent) not in _HELD_OUT:
            return shape, colour, pattern, accent


def _place(size: str, placed: list[Thing], generator: torch.Generator) -> tuple[float, float, float]:
    radius = _uniform(*SIZES[size], generator)
    best = None
    for _ in range(20):  # rejection sampling for little overlap; keep the least-overlapping try
        x, y = (_uniform(radius, IMAGE_SIZE - radius, generator) for _ in range(2))
        overlap = max((thing.radius + radius - ((thing.x - x) ** 2 + (thing.y - y) ** 2) ** 0.5 for thing in placed), default=-1)
        if best is None or overlap < best[0]:
            best = (overlap, x, y)
        if overlap <= 0:
            break
    return best[1], best[2], radius


def make_thing(identity, size: str, placed: list[Thing], generator: torch.Generator) -> Thing:
    x, y, radius = _place(size, placed, generator)
    shape, colour, pattern, accent = identity
    return Thing(shape, colour, pattern, accent, size, x, y, radius)


def sample_scene(generator: torch.Generator, objects: int | None = None, held_out: bool = False) -> Scene:
    """A random scene of 1–3 objects; pretraining identities only (no held-out subject) unless `held_out`."""
    count = objects or int(torch.multinomial(torch.tensor([0.3, 0.4, 0.3]), 1, generator=generator)) + 1
    things: list[Thing] = []
    for _ in range(count):
        things.append(make_thing(sample_identity(generator, held_out), _choice(SIZES, generator), things, generator))
    return Scene(tuple(things), _choice(BACKGROUNDS, generator), _choice(TEXTURES, generator), int(torch.randint(2**31, (), generator=generator)))


def subject_scene(subject: Subject, generator: torch.Generator, background: str | None = None, extra: int = 0) -> Scene:
    """A large instance of `subject`, plus `extra` small pretraining objects, on a random background."""
    things = [make_thing(subject.identity, "large", [], generator)]
    for _ in range(extra):
        things.append(make_thing(sample_identity(generator), "small", things, generator))
    return Scene(tuple(things), background or _choice(BACKGROUNDS, generator), _choice(TEXTURES, generator), int(torch.randint(2**31, (), generator=generator)))


def describe(thing: Thing, drop: frozenset[str] = frozenset()) -> list[str]:
    words = [("size", thing.size), ("colour", thing.colour), ("pattern", thing.pattern), ("accent", thing.accent), ("shape", thing.shape)]
    return [word for role, word in words if word is not None and role not in drop]


def caption(scene: Scene, drop: frozenset[str] = frozenset(), subject_token: str | None = None) -> str:
    """The scene's caption; `drop` leaves out attribute roles; `subject_token` names the first large object."""
    words: list[str] = []
    named = False
    for thing in scene.things:
        if subject_token and not named and thing.size == "large":
            words += [thing.size, subject_token, thing.shape]
            named = True
        else:
            words += describe(thing, drop)
    words.append("on")
    if scene.texture != "plain" and "texture" not in drop:
        words.append(scene.texture)
    words.append(scene.background)
    return " ".join(words)


def _shape_mask(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    distance = (dx**2 + dy**2).sqrt()
    if shape == "circle":
        return distance < r
    if shape == "ring":
        return (distance < r) & (distance > 0.55 * r)
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) < 0.8 * r
    if shape == "diamond":
        return dx.abs() + dy.abs() < r
    if shape == "triangle":
        return (dy < 0.7 * r) & (dy + r > 1.15 * dx.abs())
    if shape == "cross":
        return ((dx.abs() < 0.32 * r) & (dy.abs() < r)) | ((dy.abs() < 0.32 * r) & (dx.abs() < r))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _pattern_mask(pattern: str, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """True where a patterned object shows its accent colour (coordinates in pixels)."""
    if pattern == "solid":
        return torch.zeros_like(dx, dtype=torch.bool)
    if pattern == "striped":
        return torch.remainder(dx + dy, 4.0) < 2.0
    if pattern == "checkered":
        return (torch.floor(dx / 2.5) + torch.floor(dy / 2.5)).remainder(2) == 0
    if pattern == "twotone":
        return dx > 0
    raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")


def _rgb(name: str) -> torch.Tensor:
    return torch.tensor(COLOURS.get(name) or BACKGROUNDS[name])[:, None, None]


def _supersampled_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) pixel coordinates at IMAGE_SIZE scale of a 2x-supersampled `size` raster."""
    grid = (torch.arange(2 * size, dtype=torch.float32) + 0.5) / (2 * size / IMAGE_SIZE)
    return torch.meshgrid(grid, grid, indexing="ij")


def coverage(scene: Scene, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Fraction of each pixel that some object covers, (1, size, size) in [0, 1]: the scene's
    silhouettes, anti-aliased like `render`'s edges.

        >>> import torch
        >>> scene = sample_scene(torch.Generator().manual_seed(0))
        >>> mask = coverage(scene)
        >>> mask.shape, bool(mask.min() >= 0), bool(mask.max() == 1)
        (torch.Size([1, 32, 32]), True, True)
    """
    y, x = _supersampled_grid(size)
    covered = torch.zeros(2 * size, 2 * size, dtype=torch.bool)
    for thing in scene.things:
        covered |= _shape_mask(thing.shape, x - thing.x, y - thing.y, thing.radius)
    return F.avg_pool2d(covered[None, None].float(), 2)[0]


def render(scene: Scene, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Pixels of `scene`, (3, size, size) in [-1, 1]."""
    y, x = _supersampled_grid(size)  # supersample 2x, then average down
    image = _rgb(scene.background).expand(3, 2 * size, 2 * size).clone()
    if scene.texture == "speckled":
        noise = torch.rand(1, 2 * size, 2 * size, generator=torch.Generator().manual_seed(scene.seed))
        image = image + 0.25 * (noise - 0.5)
    for thing in scene.things:
        dx, dy = x - thing.x, y - thing.y
        mask = _shape_mask(thing.shape, dx, dy, thing.radius)
        colour = _rgb(thing.colour).expand_as(image)
        if thing.accent is not None:
            colour = torch.where(_pattern_mask(thing.pattern, dx, dy), _rgb(thing.accent), colour)
        image = torch.where(mask, colour, image)
    image = F.avg_pool2d(image[None], 2)[0]
    return (image * 2 - 1).clamp(-1, 1)


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's `hash` is salted per process)."""
    return zlib.crc32(text.encode())


__all__ = [
    "BACKGROUNDS", "COLOURS", "HELD_OUT_SUBJECTS", "IMAGE_SIZE", "PATTERNS", "SHAPES", "SIZES", "TEXTURES",
    "VOCABULARY", "Scene", "Subject", "Thing", "caption", "coverage", "render", "replace", "sample_identity", "sample_scene",
    "stable_hash", "subject_scene",
]
