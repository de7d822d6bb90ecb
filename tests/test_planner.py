"""The budget planner and the `estimate` / `plan` commands, on a tiny FLUX-architecture config."""

import json

import pytest

from blockskip import BlockSkipPlan, apply_block_skip, plan_for_budget
from blockskip.cli import main
from blockskip.estimate.gpus import GpuProfile
from blockskip.estimate.planner import Candidate, NoPlanFitsError
from blockskip.estimate.plot import draw_skip_sweep
from blockskip.estimate.step_time import step_time
from tiny_models import build_tiny

OPTIONS = dict(resolutions=(64, 32), text_length=7, dtype="float32", reserve_bytes=0, baseline=False)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    model = build_tiny("FluxTransformer2DModel", num_attention_heads=4, axes_dims_rope=(4, 6, 6))
    config = {**model.model.config, "_class_name": "FluxTransformer2DModel"}
    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_plan_fits_its_budget_and_is_a_valid_plan(config, tmp_path):
    budget = 3_000_000
    choice = plan_for_budget(config, budget, min_quality="bf16", allow_offload=False, prefer="quality", **OPTIONS)
    assert choice.estimate.peak_bytes <= budget
    assert choice.candidate.ratio > 0  # this budget needs skipping
    assert [entry.verdict for entry in choice.tried][-1] == "fits"
    assert all(entry.peak_bytes > budget for entry in choice.tried[:-1] if entry.verdict.startswith("over"))
    # A valid plan: it round-trips and applies to the real model it was made for.
    path = choice.plan.save(tmp_path / "plan.json")
    plan = BlockSkipPlan.load(path)
    assert plan == choice.plan and plan.model.class_name == "FluxTransformer2DModel"
    model = build_tiny("FluxTransformer2DModel", num_attention_heads=4).model
    handle = apply_block_skip(model, plan)
    assert handle.split.leading + handle.split.trailing > 0
    assert "chose:" in choice.explain()


def test_impossible_budget_is_a_clear_error(config):
    with pytest.raises(NoPlanFitsError, match="the smallest estimate was"):
        plan_for_budget(config, 10_000, allow_offload=False, **OPTIONS)
    with pytest.raises(ValueError, match="min_quality"):
        plan_for_budget(config, 10**9, min_quality="best", **OPTIONS)


def test_estimate_command_prints_a_table_and_json(config, capsys):
    arguments = ["estimate", "--model", str(config), "--skip-ratio", "0.5", "--resolution", "32",
                 "--baseline-resolution", "64", "--text-length", "7", "--dtype", "float32"]
    assert main(arguments) == 0
    table = capsys.readouterr().out
    assert "LoRA baseline" in table and "peak memory" in table and "TFLOPs step" in table
    assert main([*arguments, "--json", "--no-baseline", "--gradient-checkpointing", "--storage-dtype", "float8_e4m3fn"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"]["plan"]["kept_blocks"]["storage_dtype"] == "float8_e4m3fn"
    assert report["baseline"] is None and report["step"]["height"] == 32


def test_plan_command_writes_the_plan(config, tmp_path, capsys):
    out = tmp_path / "plan.json"
    arguments = ["plan", "--model", str(config), "--budget-gib", "1", "--reserve-gib", "0", "--resolutions", "64",
                 "--text-length", "7", "--dtype", "float32", "--min-quality", "lossless", "--out", str(out)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "chose: skip 0%, 64px, full-precision weights — " in printed  # a generous budget needs no trade
    assert f"plan written to {out}" in printed
    plan = BlockSkipPlan.load(out)
    assert plan.model.num_blocks == 7 and plan.kept_blocks.storage_dtype is None
    assert main([*arguments[:3], "--budget-gib", "0.000001", *arguments[5:]]) == 2
    assert "no plan for" in capsys.readouterr().err


def test_skip_sweep_drawing(tmp_path):
    sweep = {"model": "tiny", "resolution": 256, "baseline_resolution": 512, "ratios": [0.0, 0.3, 0.5],
             "baseline": {"peak_gib": 3.0, "tflops": 40.0},
             "series": {name: {"peak_gib": [2.0, 1.5, 1.0], "tflops": [20.0, 15.0, 10.0]}
                        for name in ("paper setting", "with fp8", "with offload")}}
    image = draw_skip_sweep(sweep)
    image.save(tmp_path / "sweep.png")
    assert image.size == (1100, 460) and (tmp_path / "sweep.png").stat().st_size > 1000
    colours = {image.getpixel((x, y)) for x in range(0, 1100, 5) for y in range(0, 460, 5)}
    assert len(colours) > 10  # lines were drawn, not a blank canvas


# Two made-up cards that make the trade obvious: one computes slowly over a fast link (fewer FLOPs
# win, so skipping wins), one computes fast over a slow link (copies dominate, so streaming loses).
COMPUTE_BOUND = GpuProfile("compute-bound", "test card", 1, 1e-7, None, 5)
LINK_BOUND = GpuProfile("link-bound", "test card", 1, 1e3, None, 3)


def test_speed_picks_skipping_when_compute_dominates(config):
    choice = plan_for_budget(config, 10**9, gpu=COMPUTE_BOUND, **OPTIONS)
    assert (choice.candidate.ratio, choice.candidate.resolution) == (0.5, 32)
    assert not choice.candidate.checkpointing and not choice.candidate.offload
    seconds = [entry.seconds for entry in choice.ranking]
    assert seconds == sorted(seconds) and seconds[0] == step_time(choice.estimate, COMPUTE_BOUND).seconds


def test_speed_avoids_weight_traffic_when_the_link_dominates(config):
    choice = plan_for_budget(config, 10**9, gpu=LINK_BOUND, **OPTIONS)
    assert choice.candidate.ratio == 0 and sum(choice.estimate.traffic.values()) == 0
    assert not choice.candidate.offload


def test_offload_only_where_nothing_faster_fits(config):
    roomy = plan_for_budget(config, 4 * 2**20, min_quality="lossless", gpu=LINK_BOUND, **OPTIONS)
    assert not roomy.candidate.offload and not roomy.candidate.checkpointing
    tight = plan_for_budget(config, int(1.2 * 2**20), min_quality="lossless", gpu=LINK_BOUND, **OPTIONS)
    assert tight.candidate.offload and tight.estimate.traffic["offload"] > 0
    assert [entry.verdict for entry in tight.tried] == ["over budget", "over budget", "fits"]


def test_preferences_trade_speed_memory_and_risk(config):
    fastest = plan_for_budget(config, 10**9, gpu=COMPUTE_BOUND, prefer="speed", **OPTIONS)
    smallest = plan_for_budget(config, 10**9, gpu=COMPUTE_BOUND, prefer="memory", **OPTIONS)
    safest = plan_for_budget(config, 10**9, gpu=COMPUTE_BOUND, prefer="quality", **OPTIONS)
    assert smallest.estimate.peak_bytes < fastest.estimate.peak_bytes
    assert safest.candidate == Candidate(0.0, 64, False, False, False)  # the old, risk-first behaviour
    assert "the fastest candidate that fits" in fastest.explain() and "best 5 that fit, by speed" in fastest.explain()


def test_the_gpu_profile_is_the_default_budget(config):
    tiny_card = GpuProfile("tiny-card", "test card", 2 / 1024, 1e-7, None, 4)  # 2 MiB
    choice = plan_for_budget(config, gpu=tiny_card, **OPTIONS)
    assert choice.budget_bytes == 2 * 2**20 and choice.estimate.peak_bytes <= choice.budget_bytes
    with pytest.raises(ValueError, match="budget or a GPU"):
        plan_for_budget(config, **OPTIONS)
    with pytest.raises(LookupError, match="profiles: rtx3060-12gb"):
        plan_for_budget(config, gpu="rtx-4090", **OPTIONS)


def test_commands_take_a_gpu_profile(config, tmp_path, capsys):
    step = ["--model", str(config), "--text-length", "7", "--dtype", "float32"]
    assert main(["estimate", *step, "--resolution", "32", "--baseline-resolution", "64", "--gpu", "rtx4090-24gb", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gpu"] == "rtx4090-24gb" and report["time_ratio"] > 0
    assert report["step"]["step_time"]["seconds"] == pytest.approx(
        report["step"]["step_time"]["compute_seconds"] + report["step"]["step_time"]["exposed_seconds"])
    out = tmp_path / "plan.json"
    assert main(["plan", *step, "--gpu", "l4-24gb", "--resolutions", "64,32", "--reserve-gib", "0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "s/step on l4-24gb (modelled)" in printed and "budget 24.0 GiB" in printed and out.exists()
    assert main(["plan", *step, "--resolutions", "64"]) == 2
    assert "give --gpu" in capsys.readouterr().err


def test_estimate_reads_a_cached_plan_without_its_bank(config, tmp_path, capsys):
    plan = tmp_path / "cached.json"
    plan.write_text(json.dumps({"skip": {"ratio": 0.5}, "residuals": {"mode": "cached"}, "offload": "drop"}))
    arguments = ["estimate", "--model", str(config), "--plan", str(plan), "--text-length", "7", "--dtype", "float32",
                 "--resolution", "32", "--no-baseline", "--json"]
    assert main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["step"]["residuals"] == "cached"
    plan.write_text(json.dumps({"skip": {"ratio": 0.5}, "residuals": {"mode": "kept"}}))
    assert main(arguments) == 2
    assert "residuals.mode" in capsys.readouterr().err  # other mistakes are still refused
