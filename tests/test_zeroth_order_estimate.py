"""Pricing a zeroth-order step: forward-only FLOPs and traffic, the optimizer's resident tensors,
and agreement with a real `ZerothOrderOptimizer` step measured on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from blockskip.cli import main
from blockskip.estimate.calibration import build_real_model
from blockskip.estimate.memory import measure_peak_memory
from blockskip.estimate.step import estimate_step
from blockskip.estimate.zeroth_order_step import ZerothOrderPricing
from blockskip.families.step_inputs import StepShape, training_inputs
from blockskip.skipping.plan import BlockSkipPlan
from blockskip.training.training_step import TrainingSetup, prepare_model, trainable_parameters
from blockskip.zeroth_order import ZerothOrderOptimizer, forwards_per_step

CONFIG = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 16,
          "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 16, "in_channels": 16,
          "axes_dims_rope": [4, 6, 6]}
SHAPE = StepShape(64, 64, 7, 2)
SKIP = BlockSkipPlan.from_dict({"skip": {"leading": 1, "trailing": 1}})


def _estimate(plan=SKIP, pricing=None, **options):
    return estimate_step(CONFIG, plan, SHAPE, TrainingSetup(), dtype=torch.float32, device="cpu", zeroth_order=pricing, **options)


def test_forwards_per_step_follow_the_estimator():
    assert [forwards_per_step("central", q) for q in (1, 2, 4)] == [2, 4, 8]
    assert [forwards_per_step("forward", q) for q in (1, 2, 4)] == [2, 3, 5]
    with pytest.raises(ValueError, match="estimator"):
        ZerothOrderPricing(estimator="backward")
    with pytest.raises(ValueError, match="update"):
        ZerothOrderPricing(update="lion")


def test_a_zeroth_order_step_is_forwards_only_with_the_optimizers_tensors_resident():
    backprop = _estimate()
    lora = backprop.breakdown["lora_params"]
    for pricing, copies in [(ZerothOrderPricing(), 1), (ZerothOrderPricing(exact_restore=False), 0),
                            (ZerothOrderPricing(update="adam", queries=2, estimator="forward"), 3)]:
        zo = _estimate(pricing=pricing)
        assert zo.backward_flops == 0 and zo.breakdown["lora_grads"] == 0
        assert zo.forward_flops == pricing.forwards * backprop.forward_flops
        assert zo.breakdown["optimizer_state"] == copies * lora
        assert zo.peak_bytes < backprop.peak_bytes
        assert zo.zeroth_order["forwards"] == pricing.forwards and "no backward" in " ".join(zo.notes)
    # A no-grad forward keeps none of the activations backward needs.
    assert _estimate(pricing=ZerothOrderPricing()).breakdown["activations"] < backprop.breakdown["activations"] / 3


def test_weights_streamed_every_forward_are_counted_every_forward():
    plan = BlockSkipPlan.from_dict({"skip": {"leading": 1, "trailing": 1}, "offload": "cpu"})
    one = estimate_step(CONFIG, plan, SHAPE, TrainingSetup(), dtype=torch.float32, device="cuda")
    zo = estimate_step(CONFIG, plan, SHAPE, TrainingSetup(), dtype=torch.float32, device="cuda",
                       zeroth_order=ZerothOrderPricing(queries=2))
    assert one.traffic["streamed"] > 0
    assert zo.traffic["streamed"] == 4 * one.traffic["streamed"] and zo.transfers["streamed"] == 4 * one.transfers["streamed"]
    assert zo.streamed_flops == 4 * one.streamed_flops and zo.streamed_spans == 4 * one.streamed_spans


@pytest.mark.parametrize("update", ["sgd", "adam"])
def test_the_estimate_matches_a_measured_zeroth_order_step(update):
    torch.manual_seed(0)
    model = build_real_model(CONFIG, torch.float32)
    prepare_model(model, SKIP, TrainingSetup())
    params = trainable_parameters(model)
    optimizer = ZerothOrderOptimizer(params, lr=1e-4, update=update)
    inputs, target = training_inputs(model, SHAPE, torch.float32)
    resident = sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}.values())
    if update == "adam":  # Adam's moments exist from the first step on; measure a later step
        optimizer.step(lambda: F.mse_loss(model(**inputs)[0], target))
        resident += 2 * sum(p.numel() * p.element_size() for p in params)
    with measure_peak_memory("cpu") as usage:
        optimizer.step(lambda: F.mse_loss(model(**inputs)[0], target))
    measured = resident + usage.peak_increase_bytes
    estimated = _estimate(pricing=ZerothOrderPricing(update=update)).peak_bytes
    assert abs(estimated - measured) / measured < 0.10, (estimated, measured)


def test_the_estimate_command_prices_a_zeroth_order_step(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    code = main(["estimate", "--model", str(config), "--skip-ratio", "0.4", "--resolution", "32", "--baseline-resolution", "64",
                 "--text-length", "7", "--dtype", "float32", "--zeroth-order", "--zo-queries", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["step"]["zeroth_order"]["forwards"] == 4 and report["step"]["backward_flops"] == 0
    assert report["baseline"]["zeroth_order"] is None and report["baseline"]["backward_flops"] > 0


def test_zeroth_order_flags_without_zeroth_order_are_refused(capsys):
    assert main(["estimate", "--model", "flux.1-dev", "--zo-queries", "3"]) != 0
    assert "--zo-queries, --zo-estimator and --zo-update need --zeroth-order" in capsys.readouterr().err


def test_zeroth_order_is_an_estimate_option_only(capsys):
    with pytest.raises(SystemExit) as stop:  # the planner never proposes it, so it takes no such flag
        main(["plan", "--model", "flux.1-dev", "--zeroth-order"])
    assert stop.value.code == 2 and "unrecognized arguments: --zeroth-order" in capsys.readouterr().err
    assert main(["estimate", "--model", "flux.1-dev", "--zeroth-order", "--compare", "--gpu", "l4-24gb"]) != 0
    assert "--compare already has zeroth-order rows" in capsys.readouterr().err
