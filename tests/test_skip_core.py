"""apply_block_skip beyond exactness: misuse, offload, checkpointing, dtypes, compile, unknown models."""

import pytest
import torch
from peft import LoraConfig
from torch import nn

from blockskip import (
    BlockSkipError,
    BlockSkipPlanError,
    SkippedBlock,
    UnknownLayoutError,
    apply_block_skip,
    get_block_skip,
    register_block_io,
    register_model_layout,
    remove_block_skip,
)
from blockskip.families.layouts import _BLOCK_IO, _block_io_from_diffusers
from tiny_models import build_tiny

PLAN = {"skip": {"leading": 4, "trailing": 2}}  # FLUX tiny: 3 double + 4 single blocks


def _flux():
    case = build_tiny("FluxTransformer2DModel")
    return case, case.inputs(seed=2, batch=2)


def _relative_error(value, reference):
    return float((value - reference).norm() / reference.norm())


def test_apply_twice_is_an_error():
    case, _ = _flux()
    apply_block_skip(case.model, PLAN)
    with pytest.raises(BlockSkipError, match="already applied"):
        apply_block_skip(case.model, PLAN)


def test_remove_without_apply_is_an_error():
    case, _ = _flux()
    with pytest.raises(BlockSkipError, match="no block skip is applied"):
        remove_block_skip(case.model)


def test_apply_after_add_adapter_is_refused():
    case, _ = _flux()
    case.model.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    with pytest.raises(BlockSkipError, match="call apply_block_skip before add_adapter"):
        apply_block_skip(case.model, PLAN)
    assert get_block_skip(case.model) is None
    assert not any(isinstance(m, SkippedBlock) for m in case.model.modules())


def test_plan_for_another_model_is_refused_before_anything_changes():
    case, _ = _flux()
    before = sum(p.numel() for p in case.model.parameters())
    with pytest.raises(BlockSkipPlanError, match="made for SanaTransformer2DModel, but the model is FluxTransformer2DModel"):
        apply_block_skip(case.model, {"model": {"class": "SanaTransformer2DModel"}, "skip": {"leading": 1}})
    with pytest.raises(BlockSkipPlanError, match="must keep at least one"):
        apply_block_skip(case.model, {"skip": {"leading": 5, "trailing": 2}})
    assert sum(p.numel() for p in case.model.parameters()) == before


def test_plan_file_path_is_accepted(tmp_path):
    from blockskip import BlockSkipPlan

    path = BlockSkipPlan.from_dict(PLAN).save(tmp_path / "plan.json")
    case, _ = _flux()
    handle = apply_block_skip(case.model, str(path))
    assert handle.split[:2] == (4, 2)


def test_skipped_weights_leave_the_module_tree():
    case, _ = _flux()
    names_before = set(case.model.state_dict())
    handle = apply_block_skip(case.model, PLAN)
    names_after = set(case.model.state_dict())
    removed = names_before - names_after
    assert names_after <= names_before  # kept keys do not move
    assert {".".join(name.split(".")[:2]) for name in removed} == set(handle.skipped_block_names())
    # .to() reaches only the module tree; the originals stay as they were, on the offload device.
    case.model.to(torch.float64)
    assert all(p.dtype == torch.float32 for block in handle.originals.values() for p in block.parameters())
    assert all(p.device.type == "cpu" for block in handle.originals.values() for p in block.parameters())


def test_handle_is_found_through_wrappers():
    case, _ = _flux()
    handle = apply_block_skip(case.model, PLAN)
    wrapper = nn.Module()
    wrapper.module = case.model
    assert get_block_skip(wrapper) is handle
    assert "skipping 4 leading + 2 trailing" in handle.summary()


def test_gradient_checkpointing_does_not_rerun_skipped_blocks():
    case, inputs = _flux()
    with torch.no_grad():
        reference = case.output(case.model(**inputs))
    case.model.enable_gradient_checkpointing()
    case.model.train()
    handle = apply_block_skip(case.model, PLAN)
    calls = []
    for name, block in handle.originals.items():
        block.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
    case.model.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v"]))
    output = case.output(case.model(**inputs))
    forward_calls = len(calls)
    assert forward_calls == len(handle.originals)
    output.square().mean().backward()
    assert len(calls) == forward_calls, "backward recomputed skipped blocks"
    assert _relative_error(output.detach(), reference) <= 1e-5
    assert all(p.grad is not None for n, p in case.model.named_parameters() if "lora_A" in n and "single_transformer_blocks.1." in n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_activations(dtype):
    case, inputs = _flux()
    case.model.to(dtype)
    inputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        reference = case.output(case.model(**inputs))
    apply_block_skip(case.model, PLAN)
    with torch.no_grad():
        skipped = case.output(case.model(**inputs))
    assert skipped.dtype == dtype
    assert torch.equal(skipped, reference)  # no_grad: every stand-in returns its block's own output


def test_model_moved_after_apply_streams_originals_in_its_dtype():
    case, inputs = _flux()
    with torch.no_grad():
        reference = case.output(case.model(**inputs))
    handle = apply_block_skip(case.model, PLAN)
    case.model.to(torch.float64)
    inputs64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        output = case.output(case.model(**inputs64))
    assert output.dtype == torch.float64
    assert _relative_error(output.float(), reference) < 1e-5
    # The originals were cast per call, never in place; removal then follows the model.
    assert all(p.dtype == torch.float32 for block in handle.originals.values() for p in block.parameters())
    remove_block_skip(case.model)
    assert all(p.dtype == torch.float64 for p in case.model.parameters())


def test_offload_none_keeps_originals_resident():
    case, inputs = _flux()
    handle = apply_block_skip(case.model, {**PLAN, "offload": "none"})
    case.model.to(torch.float64)
    inputs64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        case.model(**inputs64)
    # Resident originals moved once, for good, to where the activations are.
    assert all(p.dtype == torch.float64 for block in handle.originals.values() for p in block.parameters())


def test_compile_repeated_blocks_compiles_only_kept_blocks():
    case, inputs = _flux()
    with torch.no_grad():
        reference = case.output(case.model(**inputs))
    apply_block_skip(case.model, PLAN)
    case.model.compile_repeated_blocks(backend="eager", fullgraph=False)
    with torch.no_grad():
        output = case.output(case.model(**inputs))
    assert _relative_error(output, reference) <= 1e-5


def test_unknown_model_names_its_candidate_block_lists():
    class TinyDiT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

        def forward(self, hidden_states):
            hidden_states = self.embed(hidden_states)
            for layer in self.layers:
                hidden_states = layer(hidden_states)
            return hidden_states

    model = TinyDiT()
    with pytest.raises(UnknownLayoutError) as error:
        apply_block_skip(model, {"skip": {"leading": 1}})
    message = str(error.value)
    assert "no block layout for TinyDiT" in message and "layers (3 × Linear)" in message
    assert "register_model_layout" in message

    register_model_layout(TinyDiT, block_lists=("layers",))
    with pytest.raises(UnknownLayoutError, match="no stream layout is registered for block class Linear"):
        apply_block_skip(model, {"skip": {"leading": 1}})

    register_block_io(nn.Linear, returns=("image",), image_arg="input", text_arg=None)
    try:
        inputs = torch.randn(2, 4)
        with torch.no_grad():
            reference = model(inputs)
        apply_block_skip(model, {"skip": {"leading": 1, "trailing": 1}})
        with torch.no_grad():
            assert torch.equal(model(inputs), reference)
    finally:
        _BLOCK_IO.pop("Linear")


def test_our_table_agrees_with_diffusers_metadata():
    """Where diffusers describes a block class too, both must say the same."""
    compared = 0
    for name, ours in _BLOCK_IO.items():
        theirs = _block_io_from_diffusers(name)
        if theirs is None or ours.returns == ("joint",):
            continue  # diffusers calls joint-sequence blocks "image only"; same positions
        assert theirs.returns == ours.returns, name
        compared += 1
    assert compared >= 8
