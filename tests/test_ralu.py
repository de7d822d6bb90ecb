"""RALU's pieces: settings, stage sigmas, the rescheduling, token bookkeeping and edge scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blockskip.sampling import MixedLayout, RALURun, RALUSettings, RALUSettingsError, stage_sigmas, transition
from blockskip.sampling.edges import canny, grey, token_scores
from blockskip.sampling.mixed_tokens import duplicate_noise, refine, select_cells, unpack_tokens, upsample_children


def test_presets_give_the_official_sigma_grids():
    stage_one, stage_two, stage_three = stage_sigmas(RALUSettings.preset("4x"))
    # the grids RALU's FLUX code produces for its 4x preset (read from github ignoww/RALU)
    assert torch.allclose(stage_one, torch.tensor([1.0, 0.970, 0.930, 0.879, 0.807, 0.70]), atol=6e-3)
    assert stage_two[0] == pytest.approx(0.936, abs=1e-3) and stage_two[-1] == pytest.approx(0.55)
    assert torch.allclose(stage_three, torch.tensor([0.885, 0.816, 0.735, 0.640, 0.526, 0.388, 0.217, 0.0]), atol=6e-3)


def test_one_stage_grid_is_the_shifted_scheduler_grid():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / 7, 7).tolist())
    (grid,) = stage_sigmas(RALUSettings.full_resolution(steps=7, shift=3.0))
    assert torch.allclose(grid, scheduler.sigmas, atol=1e-6)


def test_transition_cancels_the_shared_noise_of_copies():
    change = transition(stage_end=0.3, noise_scale=6.317)
    assert change.scale * (1 - 0.3) == pytest.approx(change.noise / 6.317)  # β(1 − e) = α / Z
    assert change.scale * 0.3 == pytest.approx(1 - change.noise)  # the clean part is s·x₀ with s = 1 − α


def test_duplicate_noise_has_the_designed_covariance():
    z = 4.0
    noise = duplicate_noise(4000, 8, channels=1, patch=2, noise_scale=z, generator=torch.Generator().manual_seed(0),
                            like=torch.zeros(1))
    copies = noise[:, :, :, :].reshape(-1, 4)  # patch 2: each child token holds the 4 copies of one value
    covariance = copies.T @ copies / len(copies)
    expected = torch.eye(4) - torch.ones(4, 4) / z**2
    assert torch.allclose(covariance, expected, atol=0.02)


def test_rescheduled_upsampled_latent_is_a_flow_matching_state_with_white_noise():
    generator = torch.Generator().manual_seed(1)
    end, z, batch = 0.45, 6.317, 40000
    clean = torch.randn(1, 1, 4, generator=generator).expand(batch, 1, 4)  # one low-res token, channels 1, patch 2
    noisy = end * clean + (1 - end) * torch.randn(batch, 1, 4, generator=generator)
    layout = MixedLayout.low(1, 1)
    change = transition(end, z)
    refined = refine(noisy, layout, layout.as_full(), change.scale, change.noise, z, channels=1, patch=2, generator=generator)
    start = 1 - change.noise
    clean_up = refine(clean[:1], layout, layout.as_full(), 1.0, 0.0, z, channels=1, patch=2)
    residual = (refined - start * clean_up).reshape(batch, -1)
    covariance = residual.T @ residual / batch
    assert torch.allclose(covariance, change.noise**2 * torch.eye(16), atol=0.03)


def test_children_are_the_nearest_upsampled_latent():
    latent = torch.randn(2, 3, 4, 6)  # (B, C, H, W), patch 2 -> 2×3 cells
    tokens = latent.reshape(2, 3, 2, 2, 3, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 12)
    layout = MixedLayout.low(2, 3)
    assert torch.equal(unpack_tokens(tokens, layout.height, layout.width, 3, 2), latent)
    full = refine(tokens, layout, layout.as_full(), 1.0, 0.0, 6.0, channels=3, patch=2)
    upsampled = F.interpolate(latent, scale_factor=2, mode="nearest")
    expected = upsampled.reshape(2, 3, 4, 2, 6, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 24, 12)
    assert torch.equal(full, expected)
    assert upsample_children(tokens, 3, 2).shape == (2, 6, 4, 12)


def test_mixed_layout_sequence_and_ids_then_full_raster():
    tokens = torch.arange(4.0).reshape(1, 4, 1)  # 2×2 cells, channels 1, patch 1
    layout = MixedLayout.low(2, 2)
    mixed = layout.with_high(torch.tensor([[False, True], [False, False]]))
    step_two = refine(tokens, layout, mixed, 1.0, 0.0, 6.0, channels=1, patch=1)
    assert step_two.flatten().tolist() == [0.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    assert mixed.position_ids()[3:, 1:].tolist() == [[0, 1], [0, 1.5], [0.5, 1], [0.5, 1.5]]
    final = refine(step_two, mixed, mixed.as_full(), 1.0, 0.0, 6.0, channels=1, patch=1)
    assert final.reshape(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert mixed.as_full().position_ids()[5, 1:].tolist() == [1.0, 1.0]


def test_select_cells_takes_the_top_fraction_summed_over_the_batch():
    scores = torch.zeros(2, 2, 5)
    scores[0, 0, 1], scores[1, 1, 3], scores[0, 1, 4] = 5.0, 4.0, 1.0
    high = select_cells(scores, 0.2)  # ⌊0.2 · 10⌋ = 2 cells
    assert high.nonzero().tolist() == [[0, 1], [1, 3]]
    assert not select_cells(scores, 0.05).any()


def test_canny_finds_strong_edges_only_and_thin():
    image = -torch.ones(1, 3, 24, 24)
    image[:, :, 6:18, 6:18] = 1.0  # a white square: strong edges
    image[:, :, 2:4, 20:22] = -0.9  # a faint patch: below the low threshold
    edges = canny(grey(image))[0]
    assert edges[6:18, 5:7].any(dim=1).all() and not edges[10:14, 10:14].any()
    assert not edges[:6, 18:].any()
    assert edges[12].sum() <= 4  # non-maximum suppression leaves thin lines
    assert token_scores(edges.float()[None], 6)[0, 0, 0] == 0 and token_scores(edges.float()[None], 6)[0, 1, 1] > 0


def test_run_counts_calls_and_needs_a_scorer_for_regions():
    settings = RALUSettings.preset("4x")
    run = RALURun(settings, 8, 8, 1, 2, score_cells=lambda clean, layout: torch.rand(1, layout.height, layout.width))
    assert len(run.sigmas) == settings.calls == 18
    with pytest.raises(RALUSettingsError, match="score_cells"):
        RALURun(settings, 8, 8, 1, 2)
    with pytest.raises(RALUSettingsError, match="even"):
        RALURun(settings, 7, 8, 1, 2, score_cells=lambda c, l: c)


@pytest.mark.parametrize("bad, match", [
    (dict(steps=(3, 3), stage_ends=(0.5, 0.9), shifts=(1, 1)), "end at 1.0"),
    (dict(steps=(3,), stage_ends=(1.0,), shifts=(1, 2)), "one entry per stage"),
    (dict(noise_scale=1.5), "noise_scale"),
    (dict(region_fraction=1.5), "region_fraction"),
    (dict(edge_detector="sobel"), "edge_detector"),
    (dict(steps=(5, 0, 7)), "positive integers"),
])
def test_bad_settings_are_refused_clearly(bad, match):
    with pytest.raises(RALUSettingsError, match=match):
        RALUSettings(**bad)


def test_settings_round_trip_and_refuse_unknown_fields():
    settings = RALUSettings.preset("7x")
    assert RALUSettings.from_json(settings.to_json()) == settings
    with pytest.raises(RALUSettingsError, match="unknown RALU settings fields"):
        RALUSettings.from_json('{"stepz": [1]}')
    with pytest.raises(RALUSettingsError, match="not JSON"):
        RALUSettings.from_json("{")
    with pytest.raises(RALUSettingsError, match="unknown RALU preset"):
        RALUSettings.preset("9x")


def test_sampling_cost_counts_each_stage_at_its_sequence_length():
    from blockskip.estimate.sampling_cost import estimate_ralu_sampling

    four = estimate_ralu_sampling("FLUX.1-dev", RALUSettings.preset("4x"), 1024, 1024)
    assert four.tokens == (1024, 1945, 4096) and four.calls == (5, 6, 7)
    assert four.flops_per_call[0] < four.flops_per_call[1] < four.flops_per_call[2] == four.full_resolution_flops_per_call
    # the official presets are named for their speed-up over 50 full-resolution steps
    assert 4.0 < four.ratio_to(50) < 4.8
    seven = estimate_ralu_sampling("sd3.5-large", RALUSettings.preset("7x"), 1024, 1024)
    assert seven.tokens == (1024, 1330, 4096) and 7.0 < seven.ratio_to(50) < 8.5
    one = estimate_ralu_sampling("FLUX.1-dev", RALUSettings.full_resolution(28), 512, 512)
    assert one.ratio_to(28) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not SanaTransformer2DModel"):
        estimate_ralu_sampling("sana-600m", RALUSettings.preset("4x"), 1024, 1024)
    with pytest.raises(ValueError, match="divisible by 32"):
        estimate_ralu_sampling("FLUX.1-dev", RALUSettings.preset("4x"), 1000, 1000)


def test_estimate_command_prices_ralu_sampling(capsys):
    import json

    from blockskip.cli import main

    assert main(["estimate", "--model", "FLUX.1-dev", "--ralu", "7x", "--resolution", "512", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == [256, 331, 1024] and report["ratio_reference"] > report["ratio_same_calls"] > 1
    assert main(["estimate", "--model", "FLUX.1-dev", "--ralu", "4x", "--compare"]) != 0
    assert "does not combine" in capsys.readouterr().err
