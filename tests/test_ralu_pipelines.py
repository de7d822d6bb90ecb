"""RALU on real diffusers pipelines (tiny FLUX and SD3 built from configs): exactness against the
stock pipeline, stage bookkeeping, output size, reversal and clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from tiny_pipelines import _flux, _sd3

from blockskip.sampling import MixedLayout, RALUSettings
from blockskip.sampling.pipelines import apply_ralu, remove_ralu
from blockskip.sampling.sd3_mixed import mixed_positions, sd3_mixed_forward

SIZE = 128  # tiny VAE 8×: 16×16 latents; FLUX 8×8 tokens (4×4 at half size), SD3 8×8 patches
CALL = dict(prompt="a photo of sks dog", height=SIZE, width=SIZE, max_sequence_length=16, output_type="latent")


def pipeline(kind: str, static_shift: float | None = None):
    torch.manual_seed(0)
    components = (_flux if kind == "flux" else _sd3)({})
    if static_shift is not None:
        components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=static_shift, use_dynamic_shifting=False)
    for component in components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built from config, not loaded: dropout would be on
    pipe = (FluxPipeline if kind == "flux" else StableDiffusion3Pipeline)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps: int = 4, seed: int = 0, **extra):
    with torch.no_grad():
        return pipe(**CALL, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **extra).images


def token_counts(pipe):
    counts = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: counts.append(kwargs["hidden_states"].shape[1] if kwargs["hidden_states"].dim() == 3
                                                   else kwargs["hidden_states"].shape[-1] ** 2 // 4), with_kwargs=True)
    return counts, handle


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_one_full_resolution_stage_is_the_stock_pipeline(kind):
    pipe = pipeline(kind, static_shift=3.0)
    # FLUX's default grid is linspace(1, 1/N, N) then shifted; SD3's stock default ends elsewhere, so give it that grid
    grid = {"sigmas": torch.linspace(1, 1 / 5, 5).tolist()} if kind == "sd3" else {}
    stock = generate(pipe, steps=5, **grid)
    apply_ralu(pipe, RALUSettings.full_resolution(steps=5, shift=3.0))
    ours = generate(pipe, steps=5, **grid)
    assert ours.shape == stock.shape
    assert torch.allclose(ours, stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_three_stages_call_the_model_at_each_resolution(kind):
    pipe = pipeline(kind)
    full = generate(pipe)
    apply_ralu(pipe, RALUSettings.preset("4x"))
    counts, handle = token_counts(pipe)
    latents = generate(pipe)
    handle.remove()
    per_image = [count for count in counts]
    cells = (SIZE // 32) ** 2  # half-size token grid 4×4
    mixed = cells - int(0.3 * cells) + 4 * int(0.3 * cells)
    assert per_image == [cells] * 5 + [mixed] * 6 + [4 * cells] * 7
    assert latents.shape == full.shape  # the requested size comes out
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_remove_restores_the_stock_pipeline(kind):
    pipe = pipeline(kind)
    scheduler, stock = pipe.scheduler, generate(pipe)
    apply_ralu(pipe, RALUSettings.preset("7x"))
    assert generate(pipe).shape == stock.shape
    with pytest.raises(RuntimeError, match="already applied"):
        apply_ralu(pipe)
    remove_ralu(pipe)
    assert pipe.scheduler is scheduler and "prepare_latents" not in pipe.__dict__
    assert not pipe.transformer._forward_pre_hooks and "forward" not in pipe.transformer.__dict__
    assert torch.equal(generate(pipe), stock)
    with pytest.raises(RuntimeError, match="not applied"):
        remove_ralu(pipe)


def test_images_decode_at_the_requested_size_with_the_canny_scorer():
    pipe = pipeline("flux")
    apply_ralu(pipe, RALUSettings.preset("4x"))
    with torch.no_grad():
        image = pipe(**{**CALL, "output_type": "pt"}, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, SIZE, SIZE)


def test_gradient_scorer_needs_no_decoding():
    pipe = pipeline("sd3")
    apply_ralu(pipe, RALUSettings(**{**RALUSettings.preset("7x").__dict__, "edge_detector": "gradient"}))
    decodes = []
    pipe.vae.register_forward_pre_hook(lambda *args: decodes.append(1))
    pipe.vae.decode = lambda *args, **kwargs: decodes.append(1)
    assert generate(pipe).shape[-1] == SIZE // 8 and not decodes


def test_user_latents_start_from_every_other_pixel():
    pipe = pipeline("flux")
    apply_ralu(pipe, RALUSettings.preset("7x"))
    packed = torch.randn(1, (SIZE // 16) ** 2, 64, generator=torch.Generator().manual_seed(3))
    first = generate(pipe, latents=packed)
    assert torch.equal(first, generate(pipe, latents=packed))  # deterministic from the given latents
    assert first.shape == packed.shape


def test_unsupported_pipelines_and_sizes_are_refused():
    with pytest.raises(TypeError, match="supports FluxPipeline and StableDiffusion3Pipeline"):
        apply_ralu(object())
    pipe = apply_ralu(pipeline("flux"), RALUSettings.preset("4x"))
    with pytest.raises(ValueError, match="multiples of 32 px"):
        pipe(**{**CALL, "height": 80, "width": 80}, num_inference_steps=2)


def test_sd3_mixed_forward_matches_the_stock_forward_on_one_grid():
    pipe = pipeline("sd3")
    transformer = pipe.transformer
    latents = torch.randn(2, 16, 8, 8)
    text, pooled, timestep = torch.randn(2, 5, 32), torch.randn(2, 32), torch.tensor([500.0, 200.0])
    with torch.no_grad():
        stock = transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
                            return_dict=False)[0]
        tokens = latents.reshape(2, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 64)
        ours = sd3_mixed_forward(transformer, tokens, MixedLayout.low(4, 4), timestep, text, pooled)
    stock_tokens = stock.reshape(2, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 64)
    assert torch.allclose(ours, stock_tokens, atol=1e-5)


def test_sd3_child_positions_sit_at_half_steps_of_the_cropped_table():
    embed = pipeline("sd3").transformer.pos_embed
    layout = MixedLayout.low(4, 4)
    assert torch.allclose(mixed_positions(embed, layout, "cpu", torch.float32), embed.cropped_pos_embed(8, 8), atol=1e-6)
    mixed = layout.with_high(torch.eye(4, dtype=torch.bool))
    positions = mixed_positions(embed, mixed, "cpu", torch.float32)[0]
    table = embed.cropped_pos_embed(8, 8)[0]
    assert torch.allclose(positions[12], table[0], atol=1e-6)  # first child of cell (0, 0) sits at (0, 0)
    assert not torch.allclose(positions[13], table[0]) and not torch.allclose(positions[13], table[1])


def test_diffusers_adapter_samples_validation_images_with_ralu(tmp_path):
    pass


def test_the_shared_transformer_is_left_alone_outside_a_sampling_call():
    pipe = pipeline("flux")
    transformer = pipe.transformer
    inputs = dict(hidden_states=torch.randn(1, 64, 64), encoder_hidden_states=torch.randn(1, 16, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=torch.rand(64, 3), txt_ids=torch.zeros(16, 3), return_dict=False)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
    apply_ralu(pipe, RALUSettings.preset("7x"))
    generate(pipe)
    assert pipe.__dict__["_blockskip_ralu"].run is None
    with torch.no_grad():
        assert torch.equal(transformer(**inputs)[0], stock)  # a training-loop call between validations
    assert torch.equal(transformer(**inputs)[0].detach(), stock)
