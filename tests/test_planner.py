"""The budget planner and the `estimate` / `plan` commands, on a tiny FLUX-architecture config."""

import json

import pytest

from blockskip import BlockSkipPlan, apply_block_skip, plan_for_budget
from blockskip.cli import main
from blockskip.estimate.planner import NoPlanFitsError
from blockskip.estimate.plot import draw_skip_sweep
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
    choice = plan_for_budget(config, budget, min_quality="bf16", allow_offload=False, **OPTIONS)
    assert choice.estimate.peak_bytes <= budget
    assert choice.candidate.ratio > 0  # this budget needs skipping
    assert [verdict for _, _, verdict in choice.tried][-1] == "fits"
    assert all(peak > budget for _, peak, verdict in choice.tried[:-1] if verdict.startswith("over"))
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
