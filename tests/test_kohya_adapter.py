"""The kohya adapter end to end on the stand-in of sd-scripts (tests/upstream_standins/kohya, which
mirrors kohya-ss/sd-scripts 48d368fa557731ad0488c07304dfeba8c07910eb): a few training steps of
flux_train_network.py's trainer with block skipping and dynamic patches, the saved LoRA, memory
against the unpatched run, refusals, and nothing left patched."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent / "upstream_standins" / "kohya"))
from standin import SCRIPT, kohya_args, model_inputs, write_checkpoint, write_images  # noqa: E402

from blockskip import apply_block_skip  # noqa: E402
from blockskip.estimate.memory import measure_peak_memory  # noqa: E402
from blockskip.integrations.kohya import KohyaAdapterError, describe, main, run_training  # noqa: E402

PLAN = {"skip": {"leading": 3, "trailing": 1}, "offload": "none",
        "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}}
KEPT = {"single_blocks.1", "single_blocks.2"}


@pytest.fixture
def setup(tmp_path):
    return tmp_path, write_checkpoint(tmp_path / "flux.safetensors"), write_images(tmp_path / "images", count=3)


def _lora_keys(path):
    with safe_open(str(path), framework="pt") as opened:
        return set(opened.keys()), opened.metadata()


def test_training_runs_with_skipping_and_dynamic_patches_and_saves_kept_keys_only(setup):
    tmp, checkpoint, images = setup
    from library import flux_train_utils

    original = flux_train_utils.get_noisy_model_input_and_timesteps
    saved_path, saved_argv = sys.path[:], sys.argv[:]
    session = run_training(SCRIPT, kohya_args(tmp, checkpoint, images, steps=3), PLAN, verbose=False)
    summary = describe(session)
    assert set(summary["kept_blocks"]) == KEPT and summary["steps_at_blockskip_levels"] == 3
    assert session.crops.batches == 3
    keys, metadata = _lora_keys(tmp / "out" / "lora.safetensors")
    assert {key.split(".")[0].split("_")[4] for key in keys} == {"1", "2"}  # original single-block indices
    assert all(key.startswith("lora_unet_single_blocks_") for key in keys), sorted(keys)
    assert json.loads(metadata["ss_blockskip_plan"])["skip"] == {"leading": 3, "trailing": 1}
    assert (tmp / "out" / "blockskip_plan.json").exists()
    # nothing left patched
    assert flux_train_utils.get_noisy_model_input_and_timesteps is original
    assert sys.path == saved_path and sys.argv == saved_argv


def test_the_lora_loads_into_the_full_model_with_kohyas_loader_and_matches_the_skipped_model(setup):
    tmp, checkpoint, images = setup
    from library import flux_utils
    from networks import lora_flux

    from blockskip.integrations.kohya import lora_flux as shim

    run_training(SCRIPT, kohya_args(tmp, checkpoint, images, steps=2), PLAN, verbose=False)
    lora = tmp / "out" / "lora.safetensors"
    keys, _ = _lora_keys(lora)
    _, full = flux_utils.load_flow_model(str(checkpoint), torch.float32, "cpu")
    network, weights = lora_flux.create_network_from_weights(1.0, str(lora), None, [], full)
    network.apply_to([], full, False, True)
    info = network.load_weights(str(lora))
    assert not info.unexpected_keys and not info.missing_keys and set(weights) == keys
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_up" in k)  # it trained

    _, skipped = flux_utils.load_flow_model(str(checkpoint), torch.float32, "cpu")
    apply_block_skip(skipped, {**PLAN, "model": {"class": "Flux"}})
    shim_network, _ = shim.create_network_from_weights(1.0, str(lora), None, [], skipped)
    shim_network.apply_to([], skipped, False, True)
    shim_network.load_weights(str(lora))
    inputs = model_inputs(image_tokens=9, text_tokens=5)
    with torch.no_grad():
        assert torch.allclose(skipped(**inputs), full(**inputs), rtol=1e-5, atol=1e-6)


def test_cached_latents_are_cropped_in_latent_space(setup):
    tmp, checkpoint, images = setup
    session = run_training(SCRIPT, kohya_args(tmp, checkpoint, images, "--cache_latents", steps=2), PLAN, verbose=False)
    assert session.steps_at_blockskip_levels == 2 and session.crops.latents.schedule.min_size == 32


def test_blockskip_patches_off_trains_at_the_resolution_with_skipping_only(setup):
    tmp, checkpoint, images = setup
    session = run_training(SCRIPT, kohya_args(tmp, checkpoint, images, steps=2, resolution=48), PLAN,
                           dynamic_patches=False, verbose=False)
    assert session.crops is None and session.steps_at_blockskip_levels == 0 and session.handle is not None


def test_peak_memory_is_below_the_unpatched_run(setup):
    tmp, checkpoint, images = setup
    import flux_train_network

    args = flux_train_network.setup_parser().parse_args(kohya_args(tmp, checkpoint, images, steps=1))
    with measure_peak_memory("cpu") as plain:
        flux_train_network.FluxNetworkTrainer().train(args)
    with measure_peak_memory("cpu") as skipped:
        run_training(SCRIPT, kohya_args(tmp, checkpoint, images, steps=1), PLAN, verbose=False)
    print(f"peak increase: unpatched {plain.peak_increase_bytes} B, blockskip {skipped.peak_increase_bytes} B")
    assert skipped.peak_increase_bytes < plain.peak_increase_bytes


@pytest.mark.parametrize(
    "extra,plan,message",
    [
        (["--blocks_to_swap", "4"], PLAN, "--blocks_to_swap 4"),
        (["--gradient_checkpointing", "--cpu_offload_checkpointing"], PLAN, "--cpu_offload_checkpointing"),
        (["--base_weights", "merge.safetensors"], PLAN, "--base_weights merge.safetensors"),
        ([], {**PLAN, "residuals": {"mode": "cached", "bank": "bank"}}, '"cached"'),
        (["--resolution", "512"], PLAN, "--resolution 512"),
    ],
)
def test_refusals_come_before_the_model_loads(setup, extra, plan, message):
    tmp, _, images = setup
    missing = tmp / "no-such-checkpoint.safetensors"  # loading it would fail with another error
    args = kohya_args(tmp, missing, images, *extra)
    with pytest.raises(KohyaAdapterError, match=message.replace(".", r"\.")):
        run_training(SCRIPT, args, plan, verbose=False)


def test_a_lora_block_selection_naming_skipped_blocks_is_refused(setup):
    tmp, checkpoint, images = setup
    args = kohya_args(tmp, checkpoint, images, "--network_args", "train_double_block_indices=0")
    with pytest.raises(KohyaAdapterError, match="train_double_block_indices=0 names double_blocks 0, which the plan skips"):
        run_training(SCRIPT, args, PLAN, verbose=False)


def test_command_line_reports_refusals_and_usage(setup, tmp_path, capsys):
    tmp, checkpoint, images = setup
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    code = main([str(SCRIPT), "--blockskip_plan", str(plan_file), *kohya_args(tmp, checkpoint, images, "--blocks_to_swap", "2")])
    assert code == 2 and "blockskip: error: --blocks_to_swap 2" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "flux_train_network.py" in capsys.readouterr().out
    assert main([str(SCRIPT), "--blockskip_plan", str(plan_file), "--blockskip_quiet",
                 *kohya_args(tmp, checkpoint, images, steps=1)]) == 0
