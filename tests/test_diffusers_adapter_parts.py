"""The diffusers adapter's parts on their own: collate, timestep hand-over, validation guard, patches."""

import types

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from blockskip import BlockSkipPlan, DynamicPatchCollator, apply_block_skip
from blockskip.crops.conventions import TimestepConvention
from blockskip.integrations.diffusers.data import DreamBoothPatchCollate
from blockskip.integrations.diffusers.density import density_from_batch
from blockskip.integrations.diffusers.errors import ScriptAdapterError
from blockskip.integrations.diffusers.session import ScriptSession
from blockskip.integrations.diffusers.validation import guard_intermediate_validation
from blockskip.integrations.patching import Patches

DENSITY = {"weighting_scheme": "none", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29}


def script_collate(examples, with_prior_preservation=False):
    """The upstream collate's contract: instances, then class images; prompts alike."""
    pixels = [e["instance_images"] for e in examples]
    prompts = [e["instance_prompt"] for e in examples]
    if with_prior_preservation:
        pixels += [e["class_images"] for e in examples]
        prompts += [e["class_prompt"] for e in examples]
    return {"pixel_values": torch.stack(pixels).float(), "prompts": prompts}


def examples(count=3, with_class=True):
    out = []
    for index in range(count):
        example = {"instance_images": torch.rand(3, 64, 64) * 2 - 1, "instance_prompt": f"sks {index}"}
        if with_class:
            example.update(class_images=torch.rand(3, 64, 64) * 2 - 1, class_prompt="a dog")
        out.append(example)
    return out


def collator(scheduler=None):
    convention = TimestepConvention.from_scheduler(scheduler or FlowMatchEulerDiscreteScheduler())
    return DynamicPatchCollator(min_size=32, max_size=64, multiple_of=16, seed=0, convention=convention)


@pytest.mark.parametrize("prior", [True, False])
def test_collate_crops_instance_and_class_images_in_the_scripts_order(prior):
    collate = DreamBoothPatchCollate(lambda e: script_collate(e, prior), collator())
    batch = collate(examples(3))
    size = 6 if prior else 3
    assert batch["pixel_values"].shape == (size, 3, 32, 32)
    assert batch["prompts"] == ["sks 0", "sks 1", "sks 2"] + (["a dog"] * 3 if prior else [])
    for key in ("noise_level", "timesteps", "timestep_u"):
        assert batch[key].shape == (size,)
    assert batch["crop_box"].shape == (size, 4)


def test_collate_refuses_a_collate_that_reorders_images():
    def reversed_collate(examples):
        batch = script_collate(examples)
        return {**batch, "pixel_values": batch["pixel_values"].flip(0)}

    with pytest.raises(ScriptAdapterError, match="cannot tell which noise level belongs to which image"):
        DreamBoothPatchCollate(reversed_collate, collator())(examples(3, with_class=False))


def call_density(session, batch, noise_scheduler_copy=None, **flags):
    compute = density_from_batch(session, original=None)
    return compute(batch_size=len(batch["timestep_u"]), **{**DENSITY, **flags})


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_loop_gets_the_draws_that_index_each_crops_noise_level(shift):
    noise_scheduler_copy = FlowMatchEulerDiscreteScheduler(shift=shift)
    batch = collator(noise_scheduler_copy)([torch.zeros(3, 64, 64)] * 64)
    session = ScriptSession(BlockSkipPlan.from_dict({}), density_args=DENSITY, verbose=False)
    u = call_density(session, batch, noise_scheduler_copy)
    timesteps = noise_scheduler_copy.timesteps[(u * 1000).long()]
    assert torch.equal(timesteps / 1000, batch["noise_level"])  # FLUX's table: sigma = timestep / 1000
    by_level = u[batch["noise_level"].argsort()]
    assert (by_level.diff() <= 0).all() and u.min() < 0.2 and u.max() > 0.8  # a small u is a noisy sample
    assert session.draws_supplied == 1


def test_the_timestep_hand_over_refuses_what_would_train_on_wrong_crops():
    session = ScriptSession(BlockSkipPlan.from_dict({}), density_args=DENSITY, verbose=False)
    batch = collator()([torch.zeros(3, 64, 64)] * 4)
    with pytest.raises(ScriptAdapterError, match="crops were made for"):
        call_density(session, batch, noise_scheduler_copy=FlowMatchEulerDiscreteScheduler(shift=3.0))
    with pytest.raises(ScriptAdapterError, match="weighting_scheme='logit_normal'"):
        call_density(session, batch, weighting_scheme="logit_normal")
    with pytest.raises(ScriptAdapterError, match="asks for 3 timesteps"):
        density_from_batch(session, None)("none", 3)
    batch = None
    with pytest.raises(ScriptAdapterError, match="no blockskip batch is in scope"):
        density_from_batch(session, None)("none", 4)


def tiny_flux():
    return FluxTransformer2DModel(num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                                  joint_attention_dim=16, pooled_projection_dim=8, in_channels=8, axes_dims_rope=(2, 2, 4))


@pytest.mark.parametrize("offload", ["cpu", "drop"])
def test_intermediate_validation_sees_the_full_model_with_naive_skipping(offload):
    model = tiny_flux()
    handle = apply_block_skip(model, {"skip": {"leading": 1, "trailing": 1}, "residuals": {"mode": "none"},
                                      "offload": offload})
    seen = []

    def log_validation(pipeline, args, accelerator, pipeline_args, epoch, torch_dtype, is_final_validation=False):
        seen.append([block.slot.mode for block in model.modules() if hasattr(block, "slot")])
        return ["image"]

    script_globals = {"log_validation": log_validation}
    session = ScriptSession(handle.plan, verbose=False)
    guard_intermediate_validation(script_globals, model, handle, session)
    guarded = script_globals["log_validation"]
    if offload == "cpu":
        assert guarded(None, None, None, {}, 0, torch.float32) == ["image"]
        assert seen == [["online", "online"]]
    else:
        with pytest.warns(UserWarning, match="intermediate validation is switched off"):
            assert guarded(None, None, None, {}, 0, torch.float32) == []
        assert seen == []
    assert guarded(None, None, None, {}, 0, torch.float32, is_final_validation=True) == ["image"]
    assert seen[-1] == ["none", "none"]


def test_online_residuals_leave_validation_alone():
    model = tiny_flux()
    handle = apply_block_skip(model, {"skip": {"leading": 1}})
    script_globals = {"log_validation": lambda *a, **k: []}
    original = script_globals["log_validation"]
    guard_intermediate_validation(script_globals, model, handle, ScriptSession(handle.plan, verbose=False))
    assert script_globals["log_validation"] is original


def test_patches_restore_inherited_and_own_attributes():
    class Base:
        def method(self):
            return "base"

    class Child(Base):
        pass

    module = types.SimpleNamespace(value=1)
    with Patches() as patches:
        patches.set(Child, "method", lambda self: "patched")
        patches.set(module, "value", 2)
        patches.set(module, "value", 3)
        assert Child().method() == "patched" and module.value == 3
    assert "method" not in vars(Child) and Child().method() == "base" and module.value == 1
