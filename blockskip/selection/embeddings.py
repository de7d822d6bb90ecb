"""Embedding functions for the selection probe's semantic distance `D = 1 − cos(e(x), e(x̂))`.

An embedder maps a batch of generations to one vector per sample. It says which form of
generation it wants (`wants`): decoded images in `[0, 1]` with shape `(B, 3, H, W)`, or latents
exactly as the sampler or pipeline returns them.

- `DinoEmbedder(path)`: the paper's metric. The CLS token of a DINO or DINOv2 ViT loaded with
  `transformers` from a local folder (or a Hub id, if you allow downloads).
- `ClipImageEmbedder(path)`: the projected image embedding of a CLIP vision model.
- `LatentEmbedder()`: the flattened latents themselves. No weights, no decoder; a fallback for
  tests and a quick first look, not a measure of semantic similarity.

`load_embedder("latent" | PATH | "dino:PATH" | "clip:PATH")` picks one; a bare path is
recognised by its `config.json`.

Example:
    >>> import torch
    >>> embed = load_embedder("latent")
    >>> x = torch.randn(2, 4, 8, 8)
    >>> cosine_distance(embed(x), embed(x)).abs().max().item() < 1e-6
    True
    >>> [round(distance, 6) for distance in cosine_distance(embed(x), embed(-x)).tolist()]
    [2.0, 2.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Embedder(Protocol):
    """Maps generations to embeddings, one row per sample."""

    name: str
    wants: str  # "images" or "latents"

    def __call__(self, samples: torch.Tensor) -> torch.Tensor: ...


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`1 − cos` between matching rows of two embedding batches (float64)."""
    return 1.0 - F.cosine_similarity(a.double().flatten(1), b.double().flatten(1), dim=1)


class LatentEmbedder:
    """The flattened latents as the embedding (no model, no decoding)."""

    name = "latent-cosine"
    wants = "latents"

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.detach().flatten(1).double()

    def __repr__(self) -> str:
        return "LatentEmbedder()"


def _side(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    for key in ("shortest_edge", "height"):
        if key in value:
            return int(value[key])
    return default


class _ImageModelEmbedder:
    """Shared preprocessing: resize the short side, centre-crop, normalise, run the model."""

    wants = "images"
    kind = ""
    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD

    def __init__(self, path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        self.path = str(path)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        settings = _read_json(Path(path) / "preprocessor_config.json")
        config = _read_json(Path(path) / "config.json")
        native = config.get("image_size") or config.get("vision_config", {}).get("image_size") or 224
        crop = _side(settings.get("crop_size"), native)
        self.crop = crop
        self.resize = _side(settings.get("size"), crop) if settings.get("do_resize", True) else crop
        self.resize = max(self.resize, crop)
        self.mean = tuple(settings.get("image_mean", self.default_mean))
        self.std = tuple(settings.get("image_std", self.default_std))
        self.model = self._load().to(self.device, dtype).eval()
        self.name = f"{self.kind}:{Path(self.path).name or self.path}"

    def _load(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in `[0, 1]` → normalised `(B, 3, crop, crop)`."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} wants images of shape (B, 3, H, W), got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32).clamp(0, 1)
        height, width = images.shape[-2:]
        scale = self.resize / min(height, width)
        size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        images = images[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((images - mean) / std).to(self.dtype)

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self._features(self.preprocess(samples)).double().cpu()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class DinoEmbedder(_ImageModelEmbedder):
    """CLS token of the last layer of a DINO / DINOv2 ViT (`transformers.AutoModel`)."""

    kind = "dino"

    def _load(self):
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.path)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


class ClipImageEmbedder(_ImageModelEmbedder):
    """Projected image embedding of a CLIP vision tower (`CLIPVisionModelWithProjection`)."""

    kind = "clip"
    default_mean = CLIP_MEAN
    default_std = CLIP_STD

    def _load(self):
        from transformers import CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection.from_pretrained(self.path)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


_DINO_TYPES = {"dinov2", "dinov2_with_registers", "dinov3_vit", "vit", "dino"}
_CLIP_TYPES = {"clip", "clip_vision_model"}


def load_embedder(spec: str | Embedder, device: str | torch.device | None = None) -> Embedder:
    """An embedder from a spec: "latent", "dino:PATH", "clip:PATH", or a model folder.

    A folder is recognised by the `model_type` in its `config.json` (DINO/DINOv2/ViT → CLS token,
    CLIP → image embedding). An `Embedder` object is returned unchanged.
    """
    if not isinstance(spec, str):
        return spec
    if spec == "latent":
        return LatentEmbedder()
    kind, _, rest = spec.partition(":")
    if kind in ("dino", "clip") and rest:
        return (DinoEmbedder if kind == "dino" else ClipImageEmbedder)(rest, device=device)
    config = _read_json(Path(spec) / "config.json")
    model_type = config.get("model_type")
    if model_type in _DINO_TYPES:
        return DinoEmbedder(spec, device=device)
    if model_type in _CLIP_TYPES:
        return ClipImageEmbedder(spec, device=device)
    if not Path(spec).exists():
        raise FileNotFoundError(
            f"embedder {spec!r}: not 'latent' and no such folder; give 'latent', a local DINO/CLIP model "
            "folder, or 'dino:<hub id or path>' / 'clip:<hub id or path>'"
        )
    raise ValueError(
        f"embedder {spec!r}: config.json has model_type {model_type!r}; prefix the path with 'dino:' or 'clip:'"
    )
