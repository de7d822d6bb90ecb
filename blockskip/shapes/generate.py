"""Sample scenes from a shapes DiT: flow-matching Euler steps with classifier-free guidance.

`ralu=RALUSettings(...)` samples with Region-Adaptive Latent Upsampling instead: half-size
stages first, edge regions (Canny on the pixels) at full size next, then everything; the
settings' step counts replace `steps`.

    >>> from blockskip.shapes import ShapesTextEncoder, build_shapes_dit
    >>> from blockskip.sampling import RALUSettings
    >>> model, encoder = build_shapes_dit(), ShapesTextEncoder()
    >>> generate(model, encoder, ["large red solid circle on navy"], steps=2).shape
    torch.Size([1, 3, 32, 32])
    >>> generate(model, encoder, ["large red solid circle on navy"], size=64, ralu=RALUSettings.preset("7x")).shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

import torch
from torch import nn

from ..sampling import MixedLayout, RALURun, RALUSettings
from ..sampling.edges import cell_scores
from ..sampling.mixed_tokens import unpack_tokens
from .model import PIXELS_PER_TOKEN, image_ids, text_ids, unpack
from .text import ShapesTextEncoder


def velocity(model: nn.Module, tokens, ids, text, pooled, sigma: torch.Tensor) -> torch.Tensor:
    return model(
        hidden_states=tokens,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=sigma,
        img_ids=ids,
        txt_ids=text_ids(text.shape[1]).to(tokens),
        return_dict=False,
    )[0]


@torch.no_grad()
def generate(
    model: nn.Module,
    encoder: ShapesTextEncoder,
    prompts: list[str],
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.0,
    size: int = 32,
    batch_size: int = 64,
    ralu: RALUSettings | None = None,
) -> torch.Tensor:
    """One image per prompt, (len(prompts), 3, size, size) in [-1, 1]; seeded per call."""
    if ralu is not None:
        return _generate_ralu(model, encoder, prompts, seed, guidance, size, batch_size, ralu)
    generator = torch.Generator().manual_seed(seed)
    side = size // PIXELS_PER_TOKEN
    device = next(model.parameters()).device
    noise = torch.randn(len(prompts), side * side, 3 * PIXELS_PER_TOKEN**2, generator=generator)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        text, pooled = encoder(chunk)
        empty_text, empty_pooled = encoder([""] * len(chunk))
        text, pooled = torch.cat([text, empty_text]).to(device), torch.cat([pooled, empty_pooled]).to(device)
        x = noise[start : start + len(chunk)].to(device)
        ids = image_ids(side, side).to(device)
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
            v = velocity(model, torch.cat([x, x]), ids, text, pooled, sigma.expand(2 * len(chunk)).to(device))
            conditional, unconditional = v.chunk(2)
            x = x + (next_sigma - sigma) * (unconditional + guidance * (conditional - unconditional))
        out.append(x.cpu())
    return unpack(torch.cat(out), size, size).clamp(-1, 1)


def _score_pixels(settings: RALUSettings):
    def score_cells(clean: torch.Tensor, layout: MixedLayout) -> torch.Tensor:
        pixels = unpack_tokens(clean, layout.height, layout.width, 3, PIXELS_PER_TOKEN)  # no VAE: the latent is the image
        return cell_scores(pixels, layout.width, PIXELS_PER_TOKEN, settings.edge_detector, settings.edge_thresholds)

    return score_cells


def _generate_ralu(model, encoder, prompts, seed, guidance, size, batch_size, settings: RALUSettings) -> torch.Tensor:
    device = next(model.parameters()).device
    side = size // PIXELS_PER_TOKEN
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generator = torch.Generator().manual_seed(seed + start)
        run = RALURun(settings, side, side, 3, PIXELS_PER_TOKEN, _score_pixels(settings), generator)
        x = torch.randn(len(chunk), run.tokens, 3 * PIXELS_PER_TOKEN**2, generator=generator).to(device)
        text, pooled = encoder(chunk)
        empty_text, empty_pooled = encoder([""] * len(chunk))
        text, pooled = torch.cat([text, empty_text]).to(device), torch.cat([pooled, empty_pooled]).to(device)
        for sigma in run.sigmas:
            ids = run.position_ids.to(device)
            v = velocity(model, torch.cat([x, x]), ids, text, pooled, sigma.expand(2 * len(chunk)).to(device))
            conditional, unconditional = v.chunk(2)
            x = run.step(unconditional + guidance * (conditional - unconditional), x)
        out.append(x.cpu())
    return unpack(torch.cat(out), size, size).clamp(-1, 1)
