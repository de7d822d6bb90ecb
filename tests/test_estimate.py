"""The fake-tensor estimator: agreement with measured CPU peaks, presets, FLOPs, emulated modes, errors."""

import json

import pytest
import torch

from blockskip import estimate_training_memory
from blockskip.cli import main
from blockskip.estimate.accounting import FlopCounter, StorageLedger
from blockskip.estimate.calibration import calibrate
from blockskip.estimate.peers import budget_markdown, compare_strategies, fastest_per_budget
from blockskip.families.layouts import get_layout
from blockskip.families.presets import PRESETS, UnknownModelError, get_preset, resolve_model
from blockskip.skipping.inspection import model_from_config
from tiny_models import build_tiny

# Input sizes the tiny configs accept (Sana and LTX have 32 pixels per token; video needs frames).
SIZES = {"SanaTransformer2DModel": 128, "LTXVideoTransformer3DModel": 128}
FRAMES = {"WanTransformer3DModel": 5, "HunyuanVideoTransformer3DModel": 5, "LTXVideoTransformer3DModel": 9,
          "CogVideoXTransformer3DModel": 5}
SKIP = {"skip": {"leading": 2, "trailing": 1}}


def _calibrate(name, plan, heads=2, **options):
    model = build_tiny(name, num_attention_heads=heads).model
    return calibrate(model, plan, resolution=SIZES.get(name, 64), frames=FRAMES.get(name), text_length=7, batch_size=2, **options)


CHECKPOINTED = {**SKIP, "kept_blocks": {"gradient_checkpointing": True}}


@pytest.mark.parametrize(
    "name, plan",
    [
        ("FluxTransformer2DModel", SKIP),
        ("FluxTransformer2DModel", CHECKPOINTED),
        ("SD3Transformer2DModel", CHECKPOINTED),
        ("WanTransformer3DModel", CHECKPOINTED),
        ("LTXVideoTransformer3DModel", SKIP),
        ("Flux2Transformer2DModel", CHECKPOINTED),
        ("CogVideoXTransformer3DModel", CHECKPOINTED),
        ("Lumina2Transformer2DModel", CHECKPOINTED),
        ("AuraFlowTransformer2DModel", CHECKPOINTED),
    ],
)
def test_estimate_matches_the_measured_cpu_peak(name, plan):
    # Measured: real tensors, blockskip.estimate.memory.measure_peak_memory. Agreement is within 2% here;
    # benchmarks/estimate_calibration.py covers every family.
    result = _calibrate(name, plan)
    assert abs(result.error) < 0.10, (result.measured, result.estimated_peak)
    assert abs(result.increase_error) < 0.10, (result.measured, result.estimated_peak)


# CogVideoX's other position schemes: 5B's RoPE (CogVideoX 1.0), and 1.5's with frames in patches of
# 2 (an odd latent frame count is padded) and the image-to-video `ofs` embedding.
COGVIDEOX_VARIANTS = {  # config changes, frames
    "rope": (dict(use_rotary_positional_embeddings=True), 5),
    "1.5 i2v": (dict(use_rotary_positional_embeddings=True, patch_size_t=2, ofs_embed_dim=16, in_channels=8,
                     sample_height=8, sample_width=8, patch_bias=False), 9),  # 3 latent frames, padded to 4
}


@pytest.mark.parametrize("variant", sorted(COGVIDEOX_VARIANTS))
def test_cogvideox_position_schemes_match_the_measured_cpu_peak(variant):
    changes, frames = COGVIDEOX_VARIANTS[variant]
    model = build_tiny("CogVideoXTransformer3DModel", **changes).model
    result = calibrate(model, SKIP, resolution=64, frames=frames, text_length=11, batch_size=2)
    assert abs(result.error) < 0.10 and abs(result.increase_error) < 0.10, (result.measured, result.estimated_peak)


@pytest.mark.parametrize("name", ["Flux2Transformer2DModel", "CogVideoXTransformer3DModel",
                                  "Lumina2Transformer2DModel", "AuraFlowTransformer2DModel"])
def test_fake_step_runs_for_the_newer_families(name):
    model = build_tiny(name).model
    report = estimate_training_memory(model, SKIP, resolution=32, baseline_resolution=64, frames=FRAMES.get(name),
                                      text_length=7, dtype="float32")
    assert report.step.forward_flops > 0 and report.step.backward_flops > 0
    assert report.memory_ratio < 1 and report.flops_ratio < 1
    assert report.step.skip["leading"] == 2 and report.step.skip["trailing"] == 1


def test_builders_refuse_sizes_the_model_cannot_take():
    cases = [
        ("AuraFlowTransformer2DModel", dict(resolution=128), "position table"),  # 4x4 grid: 64 px at most
        ("Lumina2Transformer2DModel", dict(resolution=64, text_length=40), "axes_lens"),  # text axis of 32
        ("CogVideoXTransformer3DModel", dict(resolution=64, frames=5, text_length=9), "max_text_seq_length"),
    ]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            estimate_training_memory(build_tiny(name).model, SKIP, **{"text_length": 7, **options}, baseline=False)


def test_fp8_estimate_matches_the_cpu_allocator():
    # measure_peak_memory misses the frees of fp8 weights recast on every call; the allocator's own
    # events (torch.profiler) see them.
    # (With checkpointing too: see benchmarks/estimate_calibration.py.)
    result = _calibrate("FluxTransformer2DModel", {**SKIP, "kept_blocks": {"storage_dtype": "float8_e4m3fn"}},
                        method="allocator", heads=8)
    assert abs(result.error) < 0.10 and abs(result.increase_error) < 0.10, (result.measured, result.estimated_peak)


def test_report_has_baseline_ratios_and_serialises():
    model = build_tiny("FluxTransformer2DModel").model
    report = estimate_training_memory(model, {**SKIP, "patches": {"min_size": 32, "max_size": 64}}, text_length=7, dtype="float32")
    assert (report.step.height, report.baseline.height) == (32, 64)
    assert report.memory_ratio < 1 and report.flops_ratio < 1
    assert report.step.breakdown["weights"] < report.baseline.breakdown["weights"]
    assert report.step.host_bytes > 0  # the skipped blocks wait on the CPU
    assert report.step.forward_flops > 0 and report.step.backward_flops > 0
    assert sum(report.step.breakdown.values()) == report.step.peak_bytes
    json.dumps(report.to_dict())
    table = report.format_table()
    assert "LoRA baseline" in table and "ratio vs baseline" in table and "skip 2 leading + 1 trailing" in table


def test_flop_counter_counts_matmuls_and_attention():
    with FlopCounter() as flops:
        torch.ones(4, 8) @ torch.ones(8, 16)
    assert flops.total == 2 * 4 * 8 * 16
    q = torch.ones(1, 2, 5, 4, requires_grad=True)
    with FlopCounter() as flops:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    forward = 2 * 2 * 5 * 5 * (4 + 4)  # q kᵀ and p v
    assert flops.total == forward * 3  # backward: four products


def test_ledger_counts_storages_not_views_and_sees_data_swaps():
    weight = torch.nn.Parameter(torch.zeros(256), requires_grad=False)
    ledger = StorageLedger()
    ledger.register(weight, "weights")
    with ledger:
        view = weight.view(16, 16).t()  # a view of a registered tensor: nothing new
        assert ledger.live_bytes == 1024
        weight.data = weight.data.to(torch.float16)  # the old storage dies, the new one counts
        assert ledger.live_bytes == 1024 + 512
        del view
    assert ledger.live_bytes == 512


def test_cached_residuals_cost_no_compute_for_skipped_blocks():
    model = build_tiny("FluxTransformer2DModel").model
    options = dict(resolution=64, text_length=7, dtype="float32", baseline=False)
    online = estimate_training_memory(model, SKIP, **options).step
    cached = estimate_training_memory(model, SKIP, residuals="cached", **options).step
    assert cached.forward_flops < online.forward_flops
    assert cached.backward_flops == online.backward_flops
    # No skipped weights come to the device (online residuals stream two blocks' worth), none wait on the host.
    assert cached.breakdown["residual_buffers"] < online.breakdown["residual_buffers"] and cached.host_bytes == 0
    assert cached.residuals == "cached"


def test_trades_lower_the_estimate():
    model = build_tiny("FluxTransformer2DModel", num_attention_heads=8).model
    # On the CPU no skipped weights are streamed, so the kept blocks' trades dominate the picture.
    options = dict(resolution=64, text_length=7, dtype="float32", baseline=False, device="cpu")
    plain = estimate_training_memory(model, SKIP, **options).step
    checkpointed = estimate_training_memory(model, SKIP, gradient_checkpointing=True, **options).step
    fp8 = estimate_training_memory(model, SKIP, gradient_checkpointing=True, storage_dtype="float8_e4m3fn", **options).step
    offloaded = estimate_training_memory(model, SKIP, gradient_checkpointing=True, group_offload=True, **options).step
    assert checkpointed.peak_bytes < plain.peak_bytes
    assert fp8.resident_bytes["weights"] < checkpointed.resident_bytes["weights"]
    assert fp8.peak_bytes < checkpointed.peak_bytes
    assert offloaded.resident_bytes["weights"] < fp8.resident_bytes["weights"]
    assert checkpointed.backward_flops > plain.backward_flops  # the recompute is counted


def test_every_preset_builds_on_meta():
    expected = {"flux.1-dev": (57, 11.9), "sd3.5-large": (38, 8.06), "sana-1600m": (20, 1.60), "wan2.1-14b": (40, 14.29),
                "hunyuanvideo": (60, 12.82), "qwen-image": (60, 20.43), "ltx-video": (28, 1.92), "chroma": (57, 8.90),
                "flux.2-dev": (56, 32.22), "flux.2-klein-4b": (25, 3.88), "flux.2-klein-9b": (32, 9.08),
                "lumina-image-2.0": (26, 2.61), "cogvideox-2b": (30, 1.69), "cogvideox-5b": (42, 5.57)}
    for name, preset in PRESETS.items():
        model = model_from_config(preset.config)
        assert next(model.parameters()).is_meta
        assert type(model).__name__ == preset.class_name
        assert preset.source and preset.resolution >= preset.training_resolution
        if name in expected:
            blocks, billions = expected[name]
            assert get_layout(model).num_blocks == blocks
            assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == pytest.approx(billions, abs=0.01)


def test_presets_resolve_by_alias_and_path(tmp_path):
    assert get_preset("black-forest-labs/FLUX.1-dev").name == "flux.1-dev"
    assert get_preset("SANA_600M").name == "sana-600m"
    folder = tmp_path / "model" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(get_preset("sana-600m").config))
    config, preset, _ = resolve_model(tmp_path / "model")
    assert preset is None and config["num_layers"] == 28


def test_unknown_model_lists_the_presets(tmp_path, capsys):
    for bad in ("flux-2-pro", str(tmp_path / "missing")):
        with pytest.raises(UnknownModelError) as caught:
            resolve_model(bad)
        message = str(caught.value)
        assert bad in message and all(name in message for name in PRESETS)
    assert main(["estimate", "--model", "flux-2-pro"]) == 2
    error = capsys.readouterr().err
    assert "unknown model 'flux-2-pro'" in error and "flux.1-dev" in error and "wan2.1-14b" in error


def test_peers_are_priced_beside_blockskip(capsys):
    config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4, "attention_head_dim": 16,
              "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 16, "in_channels": 16,
              "axes_dims_rope": [4, 6, 6]}
    rows = compare_strategies(config, "rtx4090-24gb", resolution=64, training_resolution=32, text_length=8, dtype="float32")
    named = {row.name: row for row in rows}
    checkpointed = named["gradient checkpointing"]
    swaps = sorted((row for row in rows if row.group.startswith("block swap")), key=lambda row: int(row.setting.split()[0]))
    # More blocks swapped: less memory, more bytes over the link, never faster.
    assert [row.peak_bytes for row in swaps] == sorted((row.peak_bytes for row in swaps), reverse=True)
    assert [row.traffic_bytes for row in swaps] == sorted(row.traffic_bytes for row in swaps)
    assert all(row.seconds >= checkpointed.seconds for row in swaps)
    assert named["nf4 base weights, checkpointing"].peak_bytes < named["fp8 base weights, checkpointing"].peak_bytes < checkpointed.peak_bytes
    cached = named["BlockSkip 50%, cached"]
    assert cached.traffic_bytes < swaps[0].traffic_bytes and cached.seconds < named["LoRA baseline"].seconds
    table = fastest_per_budget(rows, [cached.peak_bytes, 10**9], reserve_bytes=0)
    assert table["BlockSkip, cached"][0] is cached and table["LoRA baseline"][0] is None
    assert all(cell is not None for cell in [row[1] for row in table.values()])
    assert "| block swap (kohya, musubi) |" in budget_markdown(rows, [0.001, 1], reserve_bytes=0)
    # Forward-only: no activations kept for a backward, so below the checkpointed step; two forwards, no backward.
    zo, zo_skip = named["zeroth-order LoRA"], named["zeroth-order LoRA, BlockSkip 30% online"]
    assert zo.peak_bytes < checkpointed.peak_bytes and zo_skip.peak_bytes < zo.peak_bytes
    assert zo.time.compute_seconds < named["LoRA baseline"].time.compute_seconds


def test_estimate_compare_command(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4,
                                  "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                                  "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}))
    arguments = ["estimate", "--model", str(config), "--compare", "--resolution", "32", "--baseline-resolution", "64",
                 "--text-length", "8", "--dtype", "float32"]
    assert main(arguments) == 2 and "--compare needs --gpu" in capsys.readouterr().err
    assert main([*arguments, "--gpu", "l4-24gb", "--budgets", "0.001,1"]) == 0
    printed = capsys.readouterr().out
    assert "block swap" in printed and "BlockSkip 50%, cached" in printed and "| strategy | 0.001 GiB | 1 GiB |" in printed
    assert main([*arguments, "--gpu", "l4-24gb", "--json"]) == 0
    strategies = json.loads(capsys.readouterr().out)["strategies"]
    assert {row["kind"] for row in strategies} == {"baseline", "peer", "zeroth-order", "blockskip"}
