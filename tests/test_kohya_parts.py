"""Pieces of the kohya adapter on the BFL-layout FLUX of the stand-in (tests/upstream_standins/kohya,
which mirrors sd-scripts 48d368fa557731ad0488c07304dfeba8c07910eb): layouts and exactness, LoRA
restriction to kept blocks, refusals, crops and noising."""

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "upstream_standins" / "kohya"))
from standin import model_inputs, tiny_flux  # noqa: E402

from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip  # noqa: E402
from blockskip.integrations.kohya import KohyaAdapterError, kohya_plan, register_kohya_flux  # noqa: E402
from blockskip.integrations.kohya.checks import check_args, check_plan  # noqa: E402
from blockskip.integrations.kohya.crops import NOISE_LEVEL_KEY, BatchCrops  # noqa: E402
from blockskip.integrations.kohya.density import kohya_sampler  # noqa: E402
from blockskip.integrations.kohya.guard import restrict_block_indices  # noqa: E402
from blockskip.integrations.kohya.noise import at_noise_levels  # noqa: E402

register_kohya_flux()


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("leading,trailing", [(1, 0), (3, 2), (0, 3), (2, 1)])
def test_skipped_bfl_flux_with_zero_lora_matches_the_full_model(leading, trailing):
    from networks import lora_flux

    model = tiny_flux()
    inputs = model_inputs(image_tokens=9, text_tokens=5)
    with torch.no_grad():
        full = model(**inputs)
    handle = apply_block_skip(model, {"skip": {"leading": leading, "trailing": trailing}, "offload": "none"})
    network = lora_flux.create_network(1.0, 4, 4, None, [], model)  # lora_up starts at zero
    network.apply_to([], model, False, True)
    assert network.unet_loras and all(
        not lora.lora_name.startswith(tuple(f"lora_unet_{n.replace('.', '_')}_" for n in handle.skipped_block_names()))
        for lora in network.unet_loras
    )
    img = inputs["img"].clone().requires_grad_(True)  # gradients on: trailing spans add a detached residual
    skipped = model(**{**inputs, "img": img})
    assert _relative(skipped.detach(), full) <= 1e-5
    skipped.sum().backward()
    assert img.grad is not None


def test_positional_single_block_calls_and_removal_restore_bit_identical_outputs():
    model = tiny_flux()
    inputs = model_inputs(image_tokens=4, text_tokens=7)
    with torch.no_grad():
        before = model(**inputs)
        apply_block_skip(model, {"skip": {"leading": 3, "trailing": 1}})
        assert type(model.single_blocks[0]).__name__ == "SkippedBlock"
        assert torch.allclose(model(**inputs), before, rtol=1e-5, atol=1e-6)
        remove_block_skip(model)
        assert torch.equal(model(**inputs), before)


def test_a_flux_plan_for_diffusers_drives_kohyas_flux_with_the_papers_table():
    plan = kohya_plan(BlockSkipPlan.from_dict({"model": {"class": "FluxTransformer2DModel", "num_blocks": 57},
                                               "skip": {"ratio": 0.5}}))
    assert plan.resolve_skip("Flux", 57)[:2] == (19, 10)
    with pytest.raises(KohyaAdapterError, match="SanaTransformer2DModel"):
        kohya_plan(BlockSkipPlan.from_dict({"model": {"class": "SanaTransformer2DModel"}}))


def test_lora_indices_are_limited_to_kept_blocks_and_skipped_ones_are_refused():
    handle = apply_block_skip(tiny_flux(), {"skip": {"leading": 3, "trailing": 1}})
    assert restrict_block_indices(handle, {}) == {"train_double_block_indices": "none", "train_single_block_indices": "1,2"}
    assert restrict_block_indices(handle, {"train_single_block_indices": "2"})["train_single_block_indices"] == "2"
    with pytest.raises(KohyaAdapterError, match="train_single_block_indices=0-1 names single_blocks 0"):
        restrict_block_indices(handle, {"train_single_block_indices": "0-1"})


def _args(**values):
    defaults = dict(blocks_to_swap=None, split_mode=False, cpu_offload_checkpointing=False, base_weights=None,
                    model_type="flux", network_module="networks.lora_flux", resolution="512", masked_loss=False,
                    gradient_checkpointing=False, fp8_base=False)
    return argparse.Namespace(**{**defaults, **values})


@pytest.mark.parametrize(
    "values,message",
    [
        (dict(blocks_to_swap=18), "--blocks_to_swap 18"),
        (dict(split_mode=True), "--split_mode"),
        (dict(cpu_offload_checkpointing=True), "--cpu_offload_checkpointing"),
        (dict(base_weights=["old.safetensors"]), "--base_weights old.safetensors"),
        (dict(model_type="chroma"), "--model_type chroma"),
        (dict(network_module="lycoris.kohya"), "--network_module lycoris.kohya"),
        (dict(resolution="1024"), "--resolution 1024 does not match the plan's patches.max_size 512"),
        (dict(masked_loss=True), "--masked_loss"),
    ],
)
def test_flags_that_cannot_work_are_refused_with_the_users_value(values, message):
    with pytest.raises(KohyaAdapterError, match=message.replace(".", r"\.")):
        check_args(_args(**values), BlockSkipPlan.from_dict({}), dynamic_patches=True)


def test_plan_settings_that_cannot_work_are_refused():
    with pytest.raises(KohyaAdapterError, match='"cached"'):
        check_plan(BlockSkipPlan.from_dict({"residuals": {"mode": "cached", "bank": "bank"}}))
    with pytest.raises(KohyaAdapterError, match="group_offload"):
        check_plan(BlockSkipPlan.from_dict({"kept_blocks": {"group_offload": True}}))
    fp8 = BlockSkipPlan.from_dict({"kept_blocks": {"storage_dtype": "float8_e4m3fn", "gradient_checkpointing": True}})
    with pytest.raises(KohyaAdapterError, match="--gradient_checkpointing"):
        check_args(_args(), fp8, dynamic_patches=True)
    with pytest.raises(KohyaAdapterError, match="--fp8_base"):
        check_args(_args(gradient_checkpointing=True), fp8, dynamic_patches=True)
    args = _args(gradient_checkpointing=True, fp8_base=True, resolution="1024")
    check_args(args, fp8, dynamic_patches=False)  # no crops: any resolution
    assert args.network_module == "blockskip.integrations.kohya.lora_flux"


def test_crops_follow_the_noise_level_for_pixels_and_cached_latents():
    plan = BlockSkipPlan.from_dict({"patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}})
    crops = BatchCrops(plan, seed=0)
    batch = crops({"images": torch.rand(3, 3, 64, 64) * 2 - 1, "latents": None})
    sides = batch["blockskip_crop_box"][:, 2].tolist()
    expected = [crops.pixels.schedule.crop_size(float(t), image_side=64) for t in batch[NOISE_LEVEL_KEY]]
    assert batch["images"].shape == (3, 3, 32, 32) and sides == expected
    latents = crops({"latents": torch.randn(2, 16, 8, 8), "images": None})
    assert latents["latents"].shape == (2, 16, 4, 4)
    with pytest.raises(KohyaAdapterError, match="alpha masks"):
        crops({"images": torch.zeros(1, 3, 64, 64), "alpha_masks": torch.ones(1, 64, 64)})


def test_noising_at_given_levels_replaces_kohyas_draw_for_one_call_only():
    from library import flux_train_utils

    original = flux_train_utils.get_noisy_model_input_and_timesteps
    scheduler = argparse.Namespace(config=argparse.Namespace(num_train_timesteps=1000))
    args = argparse.Namespace(ip_noise_gamma=None)
    latents, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    with at_noise_levels(flux_train_utils, torch.tensor([0.0, 1.0])):
        noisy, timesteps, sigmas = flux_train_utils.get_noisy_model_input_and_timesteps(
            args, scheduler, latents, noise, "cpu", torch.float32
        )
    assert flux_train_utils.get_noisy_model_input_and_timesteps is original
    assert timesteps.tolist() == [0.0, 1000.0] and sigmas.shape == (2, 1, 1, 1)
    assert torch.equal(noisy[0], latents[0]) and torch.equal(noisy[1], noise[1])


def test_default_sigma_sampling_is_kohyas_shifted_table_density():
    from library import flux_train_utils

    import flux_train_network

    args = flux_train_network.setup_parser().parse_args(["--discrete_flow_shift", "3.0"])
    scheduler = flux_train_network.FluxNetworkTrainer().get_noise_scheduler(args, "cpu")
    torch.manual_seed(0)
    latents = torch.zeros(4000, 1, 2, 2)
    _, _, kohya = flux_train_utils.get_noisy_model_input_and_timesteps(args, scheduler, latents, latents, "cpu", torch.float32)
    ours = kohya_sampler(args, train_size=256).sample(4000, torch.Generator().manual_seed(0))
    for quantile in (0.1, 0.5, 0.9):
        assert abs(float(kohya.flatten().quantile(quantile)) - float(ours.quantile(quantile))) < 0.03


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_a_lora_file_holding_pickled_objects_is_refused_unopened(tmp_path, capsys):
    from blockskip.integrations.kohya.guard import _load_keys

    file = tmp_path / "lora.pt"
    torch.save({"lora_unet_single_blocks_1_attn_qkv.lora_down.weight": _RunsCodeWhenUnpickled()}, file)
    with pytest.raises(KohyaAdapterError, match="holds more than tensors"):
        _load_keys(file)
    assert "unpickling ran code" not in capsys.readouterr().out
    torch.save({"lora_unet_single_blocks_1_attn_qkv.lora_down.weight": torch.zeros(2)}, file)
    assert _load_keys(file) == ["lora_unet_single_blocks_1_attn_qkv.lora_down.weight"]
