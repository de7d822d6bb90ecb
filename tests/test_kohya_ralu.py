"""`--blockskip_ralu` on sd-scripts: the RALU drop-in for `flux_train_utils.denoise`, on the
stand-in's BFL-layout FLUX (tests/upstream_standins/kohya)."""

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "upstream_standins" / "kohya"))
from library import flux_models, flux_utils  # noqa: E402
from standin import tiny_flux  # noqa: E402

from blockskip.integrations.kohya import KohyaAdapterError, split_arguments  # noqa: E402
from blockskip.integrations.kohya.ralu import ralu_denoise, sampling_with_ralu  # noqa: E402
from blockskip.integrations.kohya.runner import run_training  # noqa: E402
from blockskip.sampling import RALUSettings, stage_sigmas  # noqa: E402


def sampling_inputs(side=8, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model, params = tiny_flux().eval(), flux_models.configs["dev"]
    text, pooled = params.context_in_dim, params.vec_in_dim
    return model, dict(
        img=torch.randn(batch, side * side, params.in_channels, generator=generator),
        img_ids=flux_utils.prepare_img_ids(batch, side, side),
        txt=torch.randn(batch, 5, text, generator=generator), txt_ids=torch.zeros(batch, 5, 3),
        vec=torch.randn(batch, pooled, generator=generator),
        neg_txt=torch.randn(batch, 5, text, generator=generator), neg_vec=torch.randn(batch, pooled, generator=generator),
    )


def euler(model, img, img_ids, txt, txt_ids, vec, sigmas, guidance, neg_txt, neg_vec, cfg_scale):
    """sd-scripts' denoise loop, as its interface documents it: Euler over the sigmas, CFG on a doubled batch."""
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        rows = 2 * img.shape[0]
        pred = model(img=torch.cat([img, img]), img_ids=torch.cat([img_ids, img_ids]), txt=torch.cat([neg_txt, txt]),
                     txt_ids=torch.cat([txt_ids, txt_ids]), y=torch.cat([neg_vec, vec]), timesteps=torch.full((rows,), float(sigma)),
                     guidance=torch.full((rows,), guidance), txt_attention_mask=None)
        unconditional, conditional = pred.chunk(2)
        img = img + (next_sigma - sigma) * (unconditional + cfg_scale * (conditional - unconditional))
    return img


def test_one_full_resolution_stage_is_sd_scripts_euler_loop():
    model, inputs = sampling_inputs()
    settings = RALUSettings.full_resolution(steps=4, shift=3.0)
    with torch.no_grad():
        ours = ralu_denoise(settings)(model, **inputs, timesteps=None, guidance=3.5, cfg_scale=2.0)
        reference = euler(model, **inputs, sigmas=stage_sigmas(settings)[0].tolist(), guidance=3.5, cfg_scale=2.0)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_three_stages_call_the_model_at_each_resolution_and_return_the_full_grid():
    model, inputs = sampling_inputs(batch=2)
    counts = []
    model.register_forward_pre_hook(lambda module, args, kwargs: counts.append(kwargs["img"].shape[1]), with_kwargs=True)
    settings = RALUSettings(**{**RALUSettings.preset("4x").__dict__, "edge_detector": "gradient"})
    with torch.no_grad():
        out = ralu_denoise(settings)(model, **inputs, timesteps=[1.0, 0.0], guidance=3.5, cfg_scale=2.0)
    assert out.shape == inputs["img"].shape and torch.isfinite(out).all()
    assert counts == [16] * 5 + [16 - 4 + 16] * 6 + [64] * 7  # 8×8 tokens: 4×4 half-size cells, 30% of 16 = 4 upsampled


def test_sample_images_swap_denoise_for_the_call_only():
    module = types.SimpleNamespace(denoise=lambda *args, **kwargs: "stock")
    logged = []
    with sampling_with_ralu(module, RALUSettings.preset("7x"), None, logged.append):
        assert module.denoise.__name__ == "denoise" and module.denoise is not None
        swapped = module.denoise
    assert module.denoise() == "stock" and swapped is not module.denoise and "10 model calls" in logged[0]
    with pytest.raises(KohyaAdapterError, match="no denoise"):
        with sampling_with_ralu(types.SimpleNamespace(), RALUSettings.preset("7x"), None, logged.append):
            pass


def test_flag_is_read_and_checked_before_any_model_loads(tmp_path):
    arguments = split_arguments(["flux_train_network.py", "--blockskip_plan", "p.json", "--blockskip_ralu", "4x"])
    assert arguments.ralu == "4x"
    with pytest.raises(KohyaAdapterError, match="unknown RALU preset"):
        run_training(Path(__file__).parent / "upstream_standins" / "kohya" / "flux_train_network.py", [],
                     {"model": {"class": "FluxTransformer2DModel"}, "skip": {"leading": 1}}, ralu="fast")
