"""`--blockskip_ralu` for sd-scripts: sample images are denoised with RALU.

sd-scripts samples with its own loop, not a diffusers pipeline: `flux_train_utils.denoise(model,
img, img_ids, txt, txt_ids, vec, timesteps, guidance, t5_attn_mask, neg_txt, neg_vec,
neg_t5_attn_mask, cfg_scale)` Euler-steps packed latents (FLUX's 2×2 packing, ids per batch
row) through the given sigmas. While `sample_images` runs, `denoise` is replaced by one that runs
the same model calls, guidance and classifier-free guidance through RALU's stages; RALU's step
counts replace the sample prompt's `--s`. Edge regions are found by Canny on the clean estimate
decoded with the trainer's autoencoder (or latent gradients when `edge_detector` is "gradient").
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ...sampling import MixedLayout, RALURun, RALUSettings
from ...sampling.edges import cell_scores
from ...sampling.mixed_tokens import half_size_tokens, unpack_tokens
from .errors import KohyaAdapterError

CHANNELS, PATCH = 16, 2  # FLUX.1 latents, packed 2×2


def _scorer(settings: RALUSettings, autoencoder):
    detector = settings.edge_detector if autoencoder is not None else "gradient"  # nothing to decode with

    def decode(latents):
        parameter = next(autoencoder.parameters())
        with torch.no_grad():
            return autoencoder.decode(latents.to(parameter.device, parameter.dtype))  # sd-scripts' decode unscales itself

    def score_cells(clean: torch.Tensor, layout: MixedLayout) -> torch.Tensor:
        latents = unpack_tokens(clean, layout.height, layout.width, CHANNELS, PATCH)
        return cell_scores(latents, layout.width, PATCH, detector, settings.edge_thresholds, decode)

    return score_cells


def ralu_denoise(settings: RALUSettings, autoencoder=None):
    """A drop-in for sd-scripts' `flux_train_utils.denoise` that samples with RALU."""

    def denoise(model, img, img_ids, txt, txt_ids, vec, timesteps=None, guidance: float = 4.0, t5_attn_mask=None,
                neg_txt=None, neg_vec=None, neg_t5_attn_mask=None, cfg_scale=None, **unused: Any):
        height, width = int(img_ids[0, :, 1].max()) + 1, int(img_ids[0, :, 2].max()) + 1
        if height * width != img.shape[1]:
            raise KohyaAdapterError(f"RALU needs a full {height}×{width} token grid; got {img.shape[1]} tokens")
        run = RALURun(settings, height, width, CHANNELS, PATCH, _scorer(settings, autoencoder))
        if settings.stages > 1:  # stage 1 starts from every other latent pixel of the given noise
            img = half_size_tokens(img, height, width, CHANNELS, PATCH)
        guided = neg_txt is not None and neg_vec is not None
        rows = 2 * img.shape[0] if guided else img.shape[0]
        guidance_vec = torch.full((rows,), guidance, device=img.device, dtype=img.dtype)
        b_txt = torch.cat([neg_txt, txt]) if guided else txt
        b_vec = torch.cat([neg_vec, vec]) if guided else vec
        b_txt_ids = torch.cat([txt_ids, txt_ids]) if guided else txt_ids
        b_mask = t5_attn_mask
        if guided:
            b_mask = torch.cat([neg_t5_attn_mask, t5_attn_mask]) if t5_attn_mask is not None and neg_t5_attn_mask is not None else None
        for sigma in run.sigmas:
            ids = run.position_ids.to(img.device, img_ids.dtype)[None].expand(rows, -1, -1)
            t_vec = torch.full((rows,), float(sigma), dtype=img.dtype, device=img.device)
            pred = model(img=torch.cat([img, img]) if guided else img, img_ids=ids, txt=b_txt, txt_ids=b_txt_ids, y=b_vec,
                         timesteps=t_vec, guidance=guidance_vec, txt_attention_mask=b_mask)
            if guided:
                unconditional, conditional = pred.chunk(2)
                pred = unconditional + cfg_scale * (conditional - unconditional)
            img = run.step(pred, img)
        return img

    return denoise


@contextmanager
def sampling_with_ralu(flux_train_utils, settings: RALUSettings, autoencoder, log) -> Iterator[None]:
    """Replace `flux_train_utils.denoise` for the duration (sd-scripts looks it up at call time)."""
    original = getattr(flux_train_utils, "denoise", None)
    if original is None:
        raise KohyaAdapterError("--blockskip_ralu: this sd-scripts checkout's flux_train_utils has no denoise() to replace")
    log(f"sample images with RALU: {settings.stages} stages, {settings.calls} model calls")
    flux_train_utils.denoise = ralu_denoise(settings, autoencoder)
    try:
        yield
    finally:
        flux_train_utils.denoise = original
