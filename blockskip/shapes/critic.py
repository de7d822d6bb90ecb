"""An attribute reader for shapes scenes, our stand-in for DINO and CLIP in quality metrics.

A small CNN trained only on freshly rendered scenes (never on a model's samples) to read back
the background, its texture, the main (largest) object's shape, pattern and colours, and which
shapes and which colours appear anywhere in the scene. The main object's colours are read as a set (its colour and
accent): stripes and checks of red on yellow and of yellow on red differ only by a phase. Its features give three scores:

- `subject_similarity` (DINO-like): cosine similarity of the main object's identity embedding;
- `image_similarity` (CLIP-I-like): cosine similarity of the whole-image features;
- `prompt_adherence` (CLIP-T-like): the fraction of the attributes a prompt states that the critic
  reads back from the image.

It was trained on 32-px renders; `critic_view` average-pools larger images to that side first, as
a CLIP processor resizes its input.

    >>> critic = AttributeCritic()
    >>> features = critic(torch.zeros(2, 3, 32, 32))
    >>> features["image"].shape, features["identity"].shape, features["shape"].shape, features["colours"].shape
    (torch.Size([2, 128]), torch.Size([2, 64]), torch.Size([2, 6]), torch.Size([2, 8]))
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .scenes import BACKGROUNDS, COLOURS, IMAGE_SIZE, PATTERNS, SHAPES, TEXTURES, Scene

CRITIC_FILE = Path(__file__).parent / "weights" / "critic.safetensors"
IDENTITY_HEADS = {"shape": SHAPES, "pattern": PATTERNS}  # single-label; "colours" is multi-label
SCENE_HEADS = {"background": tuple(BACKGROUNDS), "texture": TEXTURES}
MULTI_LABEL = ("colours", "shapes_present", "colours_present")  # the main object's colours; anything in the scene


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class AttributeCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(_conv(3, 16), _conv(16, 32, 2), _conv(32, 64), _conv(64, 64, 2), _conv(64, 128))
        self.identity = nn.Linear(128 * 2, 64)
        self.heads = nn.ModuleDict({name: nn.Linear(64, len(values)) for name, values in IDENTITY_HEADS.items()})
        self.colours = nn.Linear(64, len(COLOURS))
        self.scene_heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in SCENE_HEADS.items()})
        self.present = nn.ModuleDict({"shapes_present": nn.Linear(128 * 2, len(SHAPES)), "colours_present": nn.Linear(128 * 2, len(COLOURS))})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        grid = self.trunk(images)
        pooled = torch.cat([grid.mean(dim=(2, 3)), grid.amax(dim=(2, 3))], dim=1)
        identity = self.identity(pooled)
        out = {"image": grid.mean(dim=(2, 3)), "identity": identity}
        out.update({name: head(pooled) for name, head in self.present.items()})
        out.update({name: head(F.gelu(identity)) for name, head in self.heads.items()})
        out["colours"] = self.colours(F.gelu(identity))
        out.update({name: head(out["image"]) for name, head in self.scene_heads.items()})
        return out


def main_object(scene: Scene):
    return max(scene.things, key=lambda thing: thing.radius)


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Training targets of the critic's heads for rendered `scenes`."""
    out: dict[str, list] = {name: [] for name in [*IDENTITY_HEADS, *SCENE_HEADS, *MULTI_LABEL]}
    for scene in scenes:
        main = main_object(scene)
        out["shape"].append(SHAPES.index(main.shape))
        out["pattern"].append(PATTERNS.index(main.pattern))
        out["colours"].append(colour_set_vector({main.colour, main.accent} - {None}))
        out["background"].append(list(BACKGROUNDS).index(scene.background))
        out["texture"].append(TEXTURES.index(scene.texture))
        shapes = torch.zeros(len(SHAPES))
        shapes[[SHAPES.index(thing.shape) for thing in scene.things]] = 1
        out["shapes_present"].append(shapes)
        out["colours_present"].append(colour_set_vector({c for thing in scene.things for c in (thing.colour, thing.accent) if c}))
    return {name: torch.stack(values) if name in MULTI_LABEL else torch.tensor(values) for name, values in out.items()}


def colour_set_vector(colours: set[str]) -> torch.Tensor:
    vector = torch.zeros(len(COLOURS))
    for colour in colours:
        vector[list(COLOURS).index(colour)] = 1
    return vector


def read_colours(logits: torch.Tensor, patterns: torch.Tensor) -> list[set[str]]:
    """The main object's colour set per image: the top two colours, or the top one when solid."""
    names = list(COLOURS)
    top = logits.topk(2, dim=1).indices.tolist()
    return [{names[top[row][0]]} if PATTERNS[int(pattern)] == "solid" else {names[i] for i in top[row]} for row, pattern in enumerate(patterns)]


def critic_loss(outputs: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = sum(F.binary_cross_entropy_with_logits(outputs[name], target[name]) for name in MULTI_LABEL)
    for name in [*IDENTITY_HEADS, *SCENE_HEADS]:
        loss = loss + F.cross_entropy(outputs[name], target[name])
    return loss


def critic_view(images: torch.Tensor) -> torch.Tensor:
    """`images` at the side the critic reads (32 px), average-pooled from any larger multiple of it."""
    return images if images.shape[-1] == IMAGE_SIZE else F.adaptive_avg_pool2d(images, IMAGE_SIZE)


def load_critic(path: str | Path | None = None) -> AttributeCritic:
    """The critic shipped with blockskip (or the one at `path`), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else CRITIC_FILE
    if not path.exists():
        raise FileNotFoundError(f"no critic weights at {path}; train them with benchmarks/quality/train_critic.py")
    critic = AttributeCritic()
    critic.load_state_dict(load_file(str(path)))
    return critic.eval().requires_grad_(False)
