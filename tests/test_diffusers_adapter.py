"""The diffusers DreamBooth-LoRA adapter, end to end on a stand-in script and a tiny FLUX pipeline.

The stand-in (`upstream_standins/train_dreambooth_lora_flux_standin.py`) keeps the upstream
script's interfaces that the adapter touches; `test_diffusers_upstream.py` runs the real script
when a diffusers checkout is available.
"""

import argparse
import json
import runpy
import sys
from pathlib import Path

import diffusers
import diffusers.training_utils
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline

from blockskip import BlockSkipPlan, measure_peak_memory
from blockskip.crops.patches import PatchSchedule
from blockskip.integrations.diffusers import (
    ScriptAdapterError,
    main,
    run_script,
    split_arguments,
)

STANDIN = Path(__file__).parent / "upstream_standins" / "train_dreambooth_lora_flux_standin.py"
PLAN = {"skip": {"leading": 1, "trailing": 2}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}}
SKIPPED = {"transformer_blocks.0", "single_transformer_blocks.2", "single_transformer_blocks.3"}
KEPT = {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"}
STEPS = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers_adapter")
    build_tiny_pipeline("flux", root / "flux")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):  # non-square and larger than --resolution: the dataset resizes and crops
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(images / f"{index}.png")
    plan = root / "plan.json"
    plan.write_text(json.dumps(PLAN))
    return root


def script_args(workspace, output, *extra):
    return [
        "--pretrained_model_name_or_path", str(workspace / "flux"), "--instance_data_dir", str(workspace / "images"),
        "--instance_prompt", "a photo of sks dog", "--resolution", "64", "--max_sequence_length", str(MAX_TOKENS),
        "--train_batch_size", "2", "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--seed", "0",
        "--mixed_precision", "no", "--output_dir", str(output), "--trace_file", str(output / "trace.json"), *extra,
    ]


def run_unpatched(args):
    saved = sys.argv[:]
    sys.argv = [str(STANDIN), *args]
    try:
        runpy.run_path(str(STANDIN), run_name="__main__")
    finally:
        sys.argv[:] = saved


@pytest.fixture(scope="module")
def runs(workspace):
    """The stand-in trained twice, unpatched and through the adapter, with CPU peaks measured."""
    plain_out, patched_out = workspace / "plain", workspace / "patched"
    validation = ["--validation_prompt", "a photo of sks dog", "--num_validation_images", "1", "--validation_epochs", "1"]
    with measure_peak_memory("cpu") as plain:
        run_unpatched(script_args(workspace, plain_out, *validation))
    with measure_peak_memory("cpu") as patched:
        session = run_script(
            STANDIN, script_args(workspace, patched_out, *validation), workspace / "plan.json", verbose=False
        )
    return {"plain": (plain_out, plain), "patched": (patched_out, patched), "session": session}


def trace(output, kind="step"):
    return [entry for entry in json.loads((output / "trace.json").read_text()) if kind in entry]


def test_training_runs_at_min_size_with_the_collators_noise_levels(runs):
    output, _ = runs["patched"]
    steps = trace(output)
    assert len(steps) == STEPS and runs["session"].draws_supplied == STEPS
    schedule = PatchSchedule(32, 64, 16)
    for step in steps:
        assert step["pixel_shape"][1:] == [3, 32, 32]  # trained at patches.min_size
        assert all(np.isfinite(step["loss"]) for step in steps)
        # the loop noised every sample at the level its crop was made for ...
        assert step["sigmas"] == pytest.approx(step["noise_level"], abs=1e-6)
        for level, box in zip(step["noise_level"], step["crop_box"]):
            assert box[2] == box[3] == schedule.crop_size(level)  # ... with the crop that level calls for
        # ... and the script's u counts down: a small u is a noisy sample
        assert [1 - u for u in step["u"]] == pytest.approx(step["sigmas"], abs=1e-3)
    # intermediate validation ran on the training transformer (online residuals: the full model's function)
    assert [entry["images"] for entry in trace(output, "validation_epoch")] == [1, 1]
    assert trace(output, "final_validation_images") == [{"final_validation_images": 1}]
    plain_steps = trace(runs["plain"][0])
    assert plain_steps[0]["pixel_shape"][1:] == [3, 64, 64] and "crop_box" not in plain_steps[0]


def test_peak_memory_is_below_the_unpatched_run(runs):
    plain, patched = runs["plain"][1], runs["patched"][1]
    print(f"CPU peak increase: unpatched {plain.peak_increase_bytes:,} B, blockskip {patched.peak_increase_bytes:,} B")
    assert patched.peak_increase_bytes < 0.8 * plain.peak_increase_bytes


def test_saved_lora_holds_kept_blocks_only_and_loads_into_the_stock_pipeline(runs, workspace):
    output, _ = runs["patched"]
    for folder in (output, output / "checkpoint-2"):  # final save and the accelerate save hook
        keys = load_file(folder / "pytorch_lora_weights.safetensors").keys()
        blocks = {".".join(key.split(".")[1:3]) for key in keys}
        assert blocks == KEPT, blocks  # original indices, no skipped block
        assert BlockSkipPlan.load(folder) == BlockSkipPlan.from_dict(PLAN)
    pipeline = diffusers.FluxPipeline.from_pretrained(workspace / "flux")
    pipeline.load_lora_weights(output)
    loaded = {".".join(name.split(".")[:2]) for name, _ in pipeline.transformer.named_parameters() if "lora_" in name}
    assert loaded == KEPT
    assert not (runs["plain"][0] / "blockskip_plan.json").exists()


def test_every_patch_is_undone(runs):
    from torch.utils.data import DataLoader

    assert "from_pretrained" not in vars(diffusers.FluxTransformer2DModel)
    assert "save_lora_weights" not in vars(diffusers.FluxPipeline)
    assert DataLoader.__init__.__module__ == "torch.utils.data.dataloader"
    assert diffusers.training_utils.compute_density_for_timestep_sampling.__module__ == "diffusers.training_utils"
    assert argparse.ArgumentParser.parse_args.__module__ == "argparse"


REFUSALS = [
    (["--cache_latents"], {}, "--cache_latents cannot work with dynamic patches"),
    (["--resolution", "48"], {}, "--resolution 48 does not match the plan's patches.max_size 64"),
    ([], {"residuals": {"mode": "cached", "bank": "bank"}}, "the scripts draw their own noise"),
    ([], {"kept_blocks": {"storage_dtype": "float8_e4m3fn"}}, "not applied by the diffusers adapter"),
    (["--enable_npu_flash_attention"], {}, "--enable_npu_flash_attention"),
    (["--lora_layers", "attn.to_q,single_transformer_blocks.3.attn.to_k"], {}, "lies in the skipped block"),
]


@pytest.mark.parametrize("extra, plan_update, message", REFUSALS, ids=[m.split(" ")[0] for _, _, m in REFUSALS])
def test_refusals_name_the_problem(workspace, tmp_path, extra, plan_update, message):
    args = script_args(workspace, tmp_path / "out")
    if "--resolution" in extra:
        args[args.index("--resolution") + 1] = extra[1]
        extra = []
    with pytest.raises(ScriptAdapterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_script(STANDIN, args + extra, {**PLAN, **plan_update}, verbose=False)
    assert "from_pretrained" not in vars(diffusers.FluxTransformer2DModel)


def test_patches_off_allows_cached_latents_and_keeps_the_resolution(workspace, tmp_path):
    output = tmp_path / "out"
    args = script_args(workspace, output, "--cache_latents")
    args[args.index("--max_train_steps") + 1] = "1"
    session = run_script(STANDIN, args, workspace / "plan.json", dynamic_patches=False, verbose=False)
    (step,) = trace(output)
    assert step["pixel_shape"][1:] == [3, 64, 64] and session.draws_supplied == 0
    assert {".".join(k.split(".")[1:3]) for k in load_file(output / "pytorch_lora_weights.safetensors")} == KEPT


def test_command_line(workspace, tmp_path, capsys):
    parsed = split_arguments(["s.py", "--rank", "4", "--blockskip_plan", "p.json", "--blockskip_quiet"])
    assert (parsed.script, parsed.plan, parsed.quiet, parsed.script_args) == ("s.py", "p.json", True, ["--rank", "4"])
    for argv, message in [
        (["s.py", "--rank", "4"], "--blockskip_plan PLAN is required"),
        (["s.py", "--blockskip_plan"], "needs a value"),
        (["s.py", "--blockskip_plna", "p"], "unknown blockskip flag --blockskip_plna"),
        (["--blockskip_plan", "p"], "name the training script first"),
        (["s.py", "--blockskip_plan", "p", "--blockskip_patches", "on"], "dynamic or off"),
    ]:
        with pytest.raises(ScriptAdapterError, match=message):
            split_arguments(argv)
    code = main([str(STANDIN), "--blockskip_plan", str(workspace / "plan.json"),
                 *script_args(workspace, tmp_path / "out", "--cache_latents")])
    assert code == 2 and "blockskip: error: --cache_latents" in capsys.readouterr().err


def test_ralu_flag_samples_every_validation_with_ralu(workspace, monkeypatch):
    from blockskip.sampling.run import RALURun

    steps = []
    original_step = RALURun.step

    def counting_step(run, velocity, tokens):
        steps.append(tokens.shape[1])
        return original_step(run, velocity, tokens)

    monkeypatch.setattr(RALURun, "step", counting_step)
    output = workspace / "ralu"
    validation = ["--validation_prompt", "a photo of sks dog", "--num_validation_images", "1", "--validation_epochs", "1"]
    arguments = split_arguments([str(STANDIN), "--blockskip_ralu", "7x", "--blockskip_plan", str(workspace / "plan.json"),
                                 *script_args(workspace, output, *validation)])
    assert arguments.ralu == "7x"
    arguments.quiet = True
    arguments.run_with(run_script)
    validations = len(trace(output, "validation_epoch")) + len(trace(output, "final_validation_images"))
    assert validations == 3 and len(steps) == 10 * validations  # 7x: 2 + 3 + 5 model calls per image
    assert steps[:10] == [4] * 5 + [16] * 5  # 64 px: 2×2 half-size cells (10% of 4 rounds to none), then 4×4


def test_ralu_flag_is_checked_before_training(workspace):
    with pytest.raises(ScriptAdapterError, match="unknown RALU preset"):
        run_script(STANDIN, script_args(workspace, workspace / "never"), workspace / "plan.json", verbose=False, ralu="9x")
    assert not (workspace / "never").exists()
