"""The shapes DiT: a small `FluxTransformer2DModel` that draws scenes of 32 to 64 px, and its pixel packing.

There is no VAE: an image's "latents" are its pixels, folded 4×4 into tokens of 48 channels
(`pack`), so a 64×64 image is 16×16 = 256 tokens and a 32×32 one (or crop) is 64. Position ids are
FLUX's (row, column) grid. The shipped checkpoint was pretrained on 32, 48 and 64 px scenes and
crops (`pretrained_sides()`), as FLUX is pretrained over many resolutions.

    >>> model = build_shapes_dit()
    >>> tokens, ids = pack(torch.zeros(2, 3, 32, 32))
    >>> tokens.shape, ids.shape, unpack(tokens, 32, 32).shape
    (torch.Size([2, 64, 48]), torch.Size([64, 3]), torch.Size([2, 3, 32, 32]))
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PIXELS_PER_TOKEN = 4
TEXT_DIM = 64

SHAPES_DIT_CONFIG = {
    "patch_size": 1,
    "in_channels": 3 * PIXELS_PER_TOKEN**2,
    "num_layers": 4,
    "num_single_layers": 8,
    "attention_head_dim": 32,
    "num_attention_heads": 3,
    "joint_attention_dim": TEXT_DIM,
    "pooled_projection_dim": TEXT_DIM,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 12, 12),
}

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "shapes-dit.safetensors"
CARD_FILE = WEIGHTS_DIR / "shapes-dit.json"


def build_shapes_dit(seed: int = 0, config: dict | None = None) -> nn.Module:
    """The architecture with seeded random weights (4 double + 8 single blocks, width 96, ~2.5M
    parameters); `config` overrides entries of `SHAPES_DIT_CONFIG` (a wider or deeper world model)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel.from_config({**SHAPES_DIT_CONFIG, **(config or {})})


def load_shapes_dit(path: str | Path | None = None) -> nn.Module:
    """The pretrained shapes DiT shipped with blockskip (or the checkpoint at `path`), in eval mode.

    The architecture is the one in the model card beside the weights (`<name>.json`), so a
    checkpoint pretrained with another config loads as it was trained.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no shapes DiT checkpoint at {path}; train one with benchmarks/quality/pretrain.py")
    card = path.with_suffix(".json")
    model = build_shapes_dit(config=json.loads(card.read_text())["config"] if card.is_file() else None)
    state = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def model_card() -> dict:
    """How the shipped checkpoint was made (config, command, images seen, time)."""
    return json.loads(CARD_FILE.read_text())


def pretrained_sides(path: str | Path | None = None) -> tuple[int, ...]:
    """The image sides (px) the shipped checkpoint (or the one at `path`) was pretrained on, from its card.

        >>> max(pretrained_sides())
        64
    """
    card = Path(path).with_suffix(".json") if path is not None else CARD_FILE
    recipe = json.loads(card.read_text()).get("recipe", {}) if card.is_file() else {}
    return tuple(recipe.get("sides", (32,)))


def image_ids(height_tokens: int, width_tokens: int) -> torch.Tensor:
    ids = torch.zeros(height_tokens, width_tokens, 3)
    ids[..., 1] = torch.arange(height_tokens)[:, None]
    ids[..., 2] = torch.arange(width_tokens)[None, :]
    return ids.reshape(-1, 3)


def pack(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) -> tokens (B, H/4 · W/4, 48) and image ids (tokens, 3)."""
    grid = F.pixel_unshuffle(images, PIXELS_PER_TOKEN)
    height, width = grid.shape[-2:]
    return grid.flatten(2).transpose(1, 2), image_ids(height, width)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens (B, N, 48) -> images (B, 3, height, width)."""
    batch = tokens.shape[0]
    grid = tokens.transpose(1, 2).reshape(batch, -1, height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN)
    return F.pixel_shuffle(grid, PIXELS_PER_TOKEN)


def text_ids(length: int) -> torch.Tensor:
    return torch.zeros(length, 3)
