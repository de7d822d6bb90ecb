"""The plan's kept_blocks section and the memory trades it asks for, on tiny real models."""

import json

import pytest
import torch
from peft import LoraConfig

from blockskip import (
    BlockSkipError,
    BlockSkipPlan,
    BlockSkipPlanError,
    apply_block_skip,
    apply_memory_trades,
    get_memory_trades,
)
from blockskip.skipping.lora import lora_target_modules
from blockskip.skipping.trades import _only_frozen_linear_weights, offload_kept_blocks
from tiny_models import build_tiny

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


# ---------------------------------------------------------------------- plan section


def test_kept_blocks_defaults_and_round_trip(tmp_path):
    plan = BlockSkipPlan.from_dict({})
    assert (plan.kept_blocks.gradient_checkpointing, plan.kept_blocks.storage_dtype, plan.kept_blocks.group_offload) == (
        False,
        None,
        False,
    )
    assert "kept_blocks" not in plan.to_dict()  # plans without trades stay readable by older versions
    data = {
        "skip": {"leading": 1, "trailing": 1},
        "kept_blocks": {"gradient_checkpointing": True, "storage_dtype": "float8_e5m2", "group_offload": True},
    }
    plan = BlockSkipPlan.from_dict(data)
    assert plan.to_dict()["kept_blocks"] == data["kept_blocks"]
    path = plan.save(tmp_path / "plan.json")
    assert BlockSkipPlan.load(path) == plan
    assert json.loads(path.read_text())["kept_blocks"]["storage_dtype"] == "float8_e5m2"


@pytest.mark.parametrize(
    "section, path, words",
    [
        ({"storage_dtype": "int4"}, "kept_blocks.storage_dtype", '"int4" is not one of float8_e4m3fn, float8_e5m2'),
        ({"gradient_checkpointing": "yes"}, "kept_blocks.gradient_checkpointing", '"yes" is not true or false'),
        ({"group_offload": None}, "kept_blocks.group_offload", "null is not true or false"),
        ({"offload": True}, "kept_blocks.offload", "unknown key (known: gradient_checkpointing, storage_dtype, group_offload)"),
        ([], "kept_blocks", "expected an object"),
    ],
)
def test_kept_blocks_errors_name_the_json_path(section, path, words):
    with pytest.raises(BlockSkipPlanError) as caught:
        BlockSkipPlan.from_dict({"kept_blocks": section})
    assert caught.value.path == path
    assert words in str(caught.value)


# ---------------------------------------------------------------------- the trades


def _model(plan):
    case = build_tiny("FluxTransformer2DModel")
    model = case.model.train()
    model.requires_grad_(False)
    apply_block_skip(model, plan)
    torch.manual_seed(0)  # init_lora_weights=False: random, non-zero LoRA, the same in every model
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=lora_target_modules(model, TARGETS)))
    return case, model


def _step(case, model):
    output = case.output(model(**case.inputs(seed=3, batch=2)))
    output.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return output.detach(), grads


SKIP = {"skip": {"leading": 2, "trailing": 1}}


def test_checkpointing_gives_the_same_loss_and_gradients():
    case, plain = _model(SKIP)
    reference, reference_grads = _step(case, plain)
    case, model = _model({**SKIP, "kept_blocks": {"gradient_checkpointing": True}})
    trades = apply_memory_trades(model)
    assert model.gradient_checkpointing and trades.summary() == "gradient checkpointing"
    output, grads = _step(case, model)
    assert torch.allclose(output, reference, rtol=1e-6, atol=1e-7)
    for name, grad in reference_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-5, atol=1e-7), name


def test_fp8_storage_casts_only_frozen_kept_weights_within_tolerance():
    case, plain = _model(SKIP)
    reference, _ = _step(case, plain)
    case, model = _model({**SKIP, "kept_blocks": {"storage_dtype": "float8_e4m3fn"}})
    trades = apply_memory_trades(model)
    assert trades.fp8_layers > 0
    kept = model.single_transformer_blocks[0]
    assert kept.attn.to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert kept.attn.to_q.lora_A["default"].weight.dtype == torch.float32  # LoRA untouched
    assert kept.norm.linear.weight.dtype == torch.float32  # the class's skip patterns (norms) kept
    assert model.x_embedder.weight.dtype == torch.float32  # outside the kept blocks: untouched
    output, grads = _step(case, model)
    relative = (output - reference).norm() / reference.norm()
    assert relative < 0.05, f"fp8 storage moved the output by {relative:.3f}"  # measured ~0.005
    assert all(torch.isfinite(grad).all() and grad.abs().sum() > 0 for grad in grads.values())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    case.output(model(**case.inputs(seed=4, batch=1))).square().mean().backward()
    optimizer.step()  # the LoRA trains; fp8 weights are never touched by the optimizer


def test_trades_need_lora_first_and_apply_once():
    case = build_tiny("FluxTransformer2DModel")
    model = case.model
    model.requires_grad_(False)
    apply_block_skip(model, {**SKIP, "kept_blocks": {"storage_dtype": "float8_e4m3fn"}})
    with pytest.raises(BlockSkipError, match="call it after add_adapter"):
        apply_memory_trades(model)
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model, TARGETS)))
    apply_memory_trades(model)
    assert get_memory_trades(model).fp8_layers > 0
    with pytest.raises(BlockSkipError, match="already applied"):
        apply_memory_trades(model)


def test_group_offload_is_cuda_only():
    _, model = _model({**SKIP, "kept_blocks": {"group_offload": True}})
    with pytest.raises(BlockSkipError, match="CUDA device"):
        apply_memory_trades(model)


def test_group_offload_hooks_frozen_layers_only_and_keeps_results_exact():
    # The CUDA path with streams cannot run here; the same hooks with CPU as both devices can.
    case, plain = _model(SKIP)
    reference, reference_grads = _step(case, plain)
    case, model = _model(SKIP)
    count = offload_kept_blocks(model, torch.device("cpu"), torch.device("cpu"), use_stream=False)
    assert count > 0
    kept = model.single_transformer_blocks[0].attn.to_q
    assert getattr(kept.base_layer, "_diffusers_hook", None) is not None
    assert getattr(kept.lora_A["default"], "_diffusers_hook", None) is None
    output, grads = _step(case, model)
    assert torch.equal(output, reference)
    for name, grad in reference_grads.items():
        assert torch.equal(grads[name], grad), name


def test_offload_sees_only_frozen_linear_weights_and_the_tree_comes_back():
    _, model = _model(SKIP)
    block = model.single_transformer_blocks[0]
    before = [(name, tensor.data_ptr()) for name, tensor in block.state_dict(keep_vars=True).items()]
    with _only_frozen_linear_weights(block):
        names = [name for name, _ in block.named_parameters()]
        assert names and all(".lora_" not in name and "norm" not in name.split(".")[-2] for name in names)
    assert [(name, tensor.data_ptr()) for name, tensor in block.state_dict(keep_vars=True).items()] == before


def test_fp8_with_checkpointing_trains_a_convolutional_model():
    # Sana's feed-forward is convolutional: only its Linear layers may take fp8 storage.
    case = build_tiny("SanaTransformer2DModel")
    model = case.model.train()
    model.requires_grad_(False)
    apply_block_skip(model, {**SKIP, "kept_blocks": {"storage_dtype": "float8_e4m3fn", "gradient_checkpointing": True}})
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model, TARGETS)))
    apply_memory_trades(model)
    kept = model.transformer_blocks[2]
    assert kept.attn1.to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert kept.ff.conv_inverted.weight.dtype == torch.float32
    case.output(model(**case.inputs(seed=1, batch=2))).square().mean().backward()
