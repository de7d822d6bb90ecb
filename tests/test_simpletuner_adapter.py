"""The SimpleTuner adapter, end to end on a stand-in SimpleTuner and a tiny FLUX pipeline.

The stand-in (`upstream_standins/simpletuner/`) mirrors what the adapter touches in SimpleTuner
4.10.1 (PyPI `simpletuner==4.10.1`): module paths, `Trainer(config=...).run()` and its `init_*`
order, `ModelFoundation.load_model / get_lora_target_layers / add_lora_adapter / prepare_batch /
sample_flow_sigmas / save_lora_weights`, `Flux`, and its own `FluxTransformer2DModel` whose single
blocks take the joint sequence. `test_simpletuner_upstream.py` runs the real SimpleTuner when
BLOCKSKIP_SIMPLETUNER names a Python interpreter that has it.
"""

import json
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline

from blockskip import BlockSkipPlan, measure_peak_memory
from blockskip.crops.patches import PatchSchedule
from blockskip.integrations.simpletuner import SimpleTunerAdapterError, main, run_training, split_arguments

STANDIN = Path(__file__).parent / "upstream_standins" / "simpletuner"
PLAN = {"skip": {"leading": 1, "trailing": 2}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}}
KEPT = {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"}
STEPS = 3


@pytest.fixture(scope="module")
def simpletuner():
    """The stand-in package importable as `simpletuner`, for this module only."""
    sys.path.insert(0, str(STANDIN))
    try:
        import simpletuner.helpers.training.trainer as trainer

        yield trainer
    finally:
        sys.path.remove(str(STANDIN))
        for name in [name for name in sys.modules if name == "simpletuner" or name.startswith("simpletuner.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("simpletuner_adapter")
    build_tiny_pipeline("flux", root / "flux")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):  # 64 x 96 px: non-square latents (8 x 12) after the VAE cache
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(images / f"{index}.png")
    backends = [
        {"id": "dog", "type": "local", "instance_data_dir": str(images), "resolution": 64, "resolution_type": "pixel",
         "caption_strategy": "instanceprompt", "instance_prompt": "a photo of sks dog", "cache_dir_vae": "vae"},
        {"id": "text-embeds", "dataset_type": "text_embeds", "default": True, "cache_dir": "text"},
    ]
    (root / "backends.json").write_text(json.dumps(backends))
    (root / "plan.json").write_text(json.dumps(PLAN))
    return root


def config(workspace, output, **extra):
    return {
        "--model_family": "flux", "--model_type": "lora", "--pretrained_model_name_or_path": str(workspace / "flux"),
        "--data_backend_config": str(workspace / "backends.json"), "--output_dir": str(output),
        "--train_batch_size": 2, "--max_train_steps": STEPS, "--checkpointing_steps": 2, "--seed": 0,
        "--lora_rank": 4, "--tokenizer_max_length": MAX_TOKENS, "--gradient_checkpointing": False,
        "--flow_schedule_auto_shift": True, **{f"--{key}": value for key, value in extra.items()},
    }


@pytest.fixture(scope="module")
def runs(simpletuner, workspace):
    """The stand-in trained twice, unpatched and through the adapter, with the training loop's CPU peak measured.

    The peak is taken over `Trainer.train()` (the steps and saves); before it, both runs load the
    same text encoders and VAE for SimpleTuner's caches, which would dominate a tiny model's peak.
    """
    peaks = []
    train = simpletuner.Trainer.train

    def measured_train(self):
        with measure_peak_memory("cpu") as usage:
            train(self)
        peaks.append(usage)

    plain_out, patched_out = workspace / "plain", workspace / "patched"
    simpletuner.Trainer.train = measured_train
    try:
        trainer = simpletuner.Trainer(config=config(workspace, plain_out))
        trainer.run()
        session = run_training(config(workspace, patched_out), workspace / "plan.json", verbose=False)
    finally:
        simpletuner.Trainer.train = train
    return {"plain": (plain_out, peaks[0], trainer), "patched": (patched_out, peaks[1], session)}


def test_training_runs_on_cropped_latents_at_the_drawn_noise_levels(runs):
    _, _, session = runs["patched"]
    steps = session.trainer.trace
    assert len(steps) == STEPS and session.steps == STEPS
    assert all(np.isfinite(step["loss"]) for step in steps)
    assert all(step["latent_shape"] == [2, 16, 4, 4] for step in steps)  # trained at min_size 32 px
    assert runs["plain"][2].trace[0]["latent_shape"] == [2, 16, 8, 12]  # unpatched: the cached 64 x 96 px
    assert session.last_batch["source_shape"] == (2, 16, 8, 12)
    schedule = PatchSchedule(32, 64, 16)
    last = steps[-1]
    assert last["sigmas"] == pytest.approx(session.last_batch["noise_level"], abs=1e-6)  # noised at the crop's level
    assert last["timesteps"] == pytest.approx([1000 * s for s in last["sigmas"]], rel=1e-5)
    for level, box in zip(session.last_batch["noise_level"], session.last_batch["crop_box"]):
        assert box[2] == box[3] == schedule.crop_size(level, image_side=64)


def test_peak_memory_is_below_the_unpatched_run(runs):
    plain, patched = runs["plain"][1], runs["patched"][1]
    print(f"CPU peak increase: unpatched {plain.peak_increase_bytes:,} B, blockskip {patched.peak_increase_bytes:,} B")
    assert patched.peak_increase_bytes < 0.8 * plain.peak_increase_bytes


def test_saved_lora_holds_kept_blocks_only_and_loads_into_the_stock_pipeline(runs, workspace):
    output, _, session = runs["patched"]
    for folder in (output, output / "checkpoint-2"):  # final save and the accelerate save hook
        keys = load_file(folder / "pytorch_lora_weights.safetensors").keys()
        assert {".".join(key.split(".")[1:3]) for key in keys} == KEPT  # original indices, no skipped block
        assert BlockSkipPlan.load(folder) == BlockSkipPlan.from_dict(PLAN)
    pipeline = diffusers.FluxPipeline.from_pretrained(workspace / "flux")
    pipeline.load_lora_weights(output)
    loaded = {".".join(name.split(".")[:2]) for name, _ in pipeline.transformer.named_parameters() if "lora_" in name}
    assert loaded == KEPT
    image = pipeline("a photo of sks dog", num_inference_steps=1, height=64, width=64,
                     max_sequence_length=MAX_TOKENS, output_type="pt").images
    assert torch.isfinite(image).all()
    assert session.registered_blocks == [
        "simpletuner.helpers.models.flux.transformer.FluxSingleTransformerBlock"
    ]


def test_every_patch_is_undone(runs, simpletuner):
    family_model = runs["patched"][2].trainer.model
    for name in ("load_model", "get_lora_target_layers", "prepare_batch", "save_lora_weights", "sample_flow_sigmas"):
        assert name not in vars(family_model), name


def test_patches_off_trains_at_the_cached_size(simpletuner, workspace, tmp_path):
    session = run_training(config(workspace, tmp_path / "out", max_train_steps=1), PLAN, dynamic_patches=False,
                           verbose=False)
    assert session.trainer.trace[0]["latent_shape"] == [2, 16, 8, 12] and session.steps == 0
    keys = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors").keys()
    assert {".".join(key.split(".")[1:3]) for key in keys} == KEPT


def test_gradient_checkpointing_passes_block_arguments_positionally(simpletuner, workspace, tmp_path):
    session = run_training(config(workspace, tmp_path / "out", max_train_steps=1, gradient_checkpointing=True),
                           PLAN, verbose=False)
    assert np.isfinite(session.trainer.trace[0]["loss"])


REFUSALS = [
    ({"tread_config": "tread.json"}, {}, "--tread_config 'tread.json' cannot be combined"),
    ({"diffusion_blocks_config": "blocks.json"}, {}, "--diffusion_blocks_config"),
    ({"musubi_blocks_to_swap": 8}, {}, "--musubi_blocks_to_swap 8"),
    ({"ramtorch": True}, {}, "--ramtorch True"),
    ({"model_type": "full"}, {}, "--model_type 'full'"),
    ({"lora_type": "lycoris"}, {}, "--lora_type 'lycoris'"),
    ({"base_model_precision": "nf4-bnb"}, {}, "--base_model_precision 'nf4-bnb'"),
    ({}, {"residuals": {"mode": "cached", "bank": "bank"}}, 'residuals.mode "cached"'),
    ({}, {"residuals": {"mode": "none"}}, 'residuals.mode "none"'),
    ({}, {"kept_blocks": {"storage_dtype": "float8_e4m3fn"}}, "not applied by the SimpleTuner adapter"),
]


@pytest.mark.parametrize("extra, plan_update, message", REFUSALS,
                         ids=lambda value: str(value)[:24] if isinstance(value, str) else None)
def test_refusals_name_the_problem_before_any_model_loads(simpletuner, workspace, tmp_path, extra, plan_update,
                                                          message, monkeypatch):
    loaded = []
    monkeypatch.setattr(simpletuner.Trainer, "init_load_base_model", lambda self: loaded.append(True))
    with pytest.raises(SimpleTunerAdapterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_training(config(workspace, tmp_path / "out", **extra), {**PLAN, **plan_update}, verbose=False)
    assert not loaded


def test_lora_targets_in_skipped_blocks_are_refused(simpletuner, workspace, tmp_path):
    # the tiny model has 4 single blocks; name one the plan skips, as --flux_lora_target tiny does on FLUX.1
    extra = {"peft_lora_target_modules": "single_transformer_blocks.3.proj_out"}
    with pytest.raises(SimpleTunerAdapterError, match="lies in the skipped block single_transformer_blocks.3"):
        run_training(config(workspace, tmp_path / "out", **extra), PLAN, verbose=False)


def test_command_line(simpletuner, workspace, tmp_path, capsys, monkeypatch):
    parsed = split_arguments(["--model_family", "flux", "--blockskip_plan", "p.json", "--blockskip_quiet"])
    assert (parsed.plan, parsed.quiet, parsed.trainer_args) == ("p.json", True, ["--model_family", "flux"])
    for argv, message in [
        (["--model_family", "flux"], "--blockskip_plan PLAN is required"),
        (["--blockskip_plan"], "needs a value"),
        (["--blockskip_plna", "p"], "unknown blockskip flag --blockskip_plna"),
        (["--blockskip_plan", "p", "--blockskip_patches", "on"], "dynamic or off"),
        (["--blockskip_plan", "p", "--blockskip_config", "c.json", "--seed", "1"], "not both"),
        (["--blockskip_plan", "p", "--blockskip_config", "c.yaml"], ".json, .toml or .env"),
    ]:
        with pytest.raises(SimpleTunerAdapterError, match=message):
            split_arguments(argv)
    # options on the command line (SimpleTuner's cmd backend), then the same as a config file (json backend)
    options = [str(item) for pair in config(workspace, tmp_path / "cli", max_train_steps=1).items() for item in pair]
    options = [option for option in options if option != "False"]
    options.remove("--gradient_checkpointing")
    assert main(["--blockskip_plan", str(workspace / "plan.json"), "--blockskip_quiet", *options]) == 0
    assert (tmp_path / "cli" / "blockskip_plan.json").exists()
    (tmp_path / "config.json").write_text(json.dumps(config(workspace, tmp_path / "file", max_train_steps=1)))
    assert main(["--blockskip_plan", str(workspace / "plan.json"), "--blockskip_config", str(tmp_path / "config.json"),
                 "--blockskip_quiet"]) == 0
    assert (tmp_path / "file" / "blockskip_plan.json").exists()
    code = main(["--blockskip_plan", str(workspace / "plan.json"), *options, "--tread_config", "t.json"])
    assert code == 2 and "blockskip: error: --tread_config" in capsys.readouterr().err


def test_ralu_flag_samples_validation_with_ralu_and_gives_the_pipeline_back(simpletuner, workspace, tmp_path, monkeypatch):
    from blockskip.sampling.run import RALURun

    calls = []
    step = RALURun.step
    monkeypatch.setattr(RALURun, "step", lambda run, velocity, tokens: calls.append(tokens.shape[1]) or step(run, velocity, tokens))
    session = run_training(config(workspace, tmp_path / "out", validation_prompt="a photo of sks dog", validation_resolution=64),
                           workspace / "plan.json", verbose=False, ralu="7x")
    trainer = session.trainer
    assert [entry for entry in trainer.trace if "validation_images" in entry] == [{"validation_images": 1}]
    assert calls == [4] * 5 + [16] * 5  # 64 px: 2×2 half-size cells (10% rounds to none), then 4×4 tokens
    (pipeline,) = trainer.model.pipelines.values()
    assert "prepare_latents" not in pipeline.__dict__ and "get_pipeline" not in trainer.model.__dict__


def test_ralu_flag_is_read_before_the_trainer_is_built(simpletuner, workspace, tmp_path):
    with pytest.raises(SimpleTunerAdapterError, match="unknown RALU preset"):
        run_training(config(workspace, tmp_path / "never"), workspace / "plan.json", verbose=False, ralu="9x")
    assert split_arguments(["--blockskip_plan", "p.json", "--blockskip_ralu", "4x"]).ralu == "4x"
