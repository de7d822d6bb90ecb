"""A LoRA trained with skipping loads into the full model with diffusers' ordinary loaders."""

import inspect
import json

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from blockskip import BlockSkipPlan, apply_block_skip, lora_target_modules, save_lora
from blockskip.skipping.lora import LORA_WEIGHT_NAME
from tiny_models import build_tiny

FAMILY_PIPELINES = [
    ("FluxTransformer2DModel", "FluxPipeline", {"skip": {"leading": 4, "trailing": 2}}),
    ("SD3Transformer2DModel", "StableDiffusion3Pipeline", {"skip": {"leading": 1, "trailing": 1}}),
    ("SanaTransformer2DModel", "SanaPipeline", {"skip": {"leading": 1, "trailing": 1}}),
]


def _train_a_few_steps(case, plan, steps=3):
    handle = apply_block_skip(case.model, plan)
    case.model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=lora_target_modules(case.model)))
    parameters = [p for p in case.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    for step in range(steps):
        inputs = case.inputs(seed=10 + step, batch=2)
        case.output(case.model(**inputs)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return handle


def _relative_error(value, reference):
    return float((value - reference).norm() / reference.norm())


@pytest.mark.parametrize("family, pipeline_name, plan", FAMILY_PIPELINES, ids=[f for f, _, _ in FAMILY_PIPELINES])
def test_saved_lora_loads_into_the_full_model(tmp_path, family, pipeline_name, plan):
    import diffusers

    trained = build_tiny(family)
    handle = _train_a_few_steps(trained, plan)
    probe = trained.inputs(seed=99, batch=2)
    with torch.no_grad():
        expected = trained.output(trained.model(**probe))

    # 1. The model-level loader, with the plan saved beside the weights.
    directory = save_lora(trained.model, tmp_path / "lora")
    assert BlockSkipPlan.load(directory) == handle.plan
    keys = load_file(directory / LORA_WEIGHT_NAME).keys()
    kept = set(handle.kept_block_names())
    assert {".".join(key.split(".")[:2]) for key in keys} == kept  # original indices, kept blocks only
    full = build_tiny(family)
    full.model.load_lora_adapter(str(directory), weight_name=LORA_WEIGHT_NAME, prefix=None)
    loaded_blocks = {".".join(n.split(".")[:2]) for n, _ in full.model.named_parameters() if "lora_" in n}
    assert loaded_blocks == kept  # PEFT may warn about suffix targets; it still loads only what was saved
    with torch.no_grad():
        reloaded = full.output(full.model(**probe))
    # Online residuals run the skipped blocks on the real input: the same function as the full model.
    assert _relative_error(reloaded, expected) <= 1e-5

    # 2. The pipeline-level loader that `load_lora_weights` uses, from the file the training
    #    scripts write with `save_lora_weights`.
    pipeline_class = getattr(diffusers, pipeline_name)
    pipeline_class.save_lora_weights(
        tmp_path / "pipeline_lora", transformer_lora_layers=get_peft_model_state_dict(trained.model)
    )
    state_dict = pipeline_class.lora_state_dict(str(tmp_path / "pipeline_lora"))
    if isinstance(state_dict, tuple):
        state_dict = state_dict[0]
    other = build_tiny(family)
    loader_arguments = inspect.signature(pipeline_class.load_lora_into_transformer).parameters
    extra = {"network_alphas": None} if "network_alphas" in loader_arguments else {}
    pipeline_class.load_lora_into_transformer(state_dict, transformer=other.model, **extra)
    with torch.no_grad():
        reloaded = other.output(other.model(**probe))
    assert _relative_error(reloaded, expected) <= 1e-5


def test_saved_plan_records_provenance(tmp_path):
    trained = build_tiny("FluxTransformer2DModel")
    _train_a_few_steps(trained, {"model": {"class": "FluxTransformer2DModel"}, "skip": {"leading": 4, "trailing": 1}}, steps=1)
    directory = save_lora(trained.model, tmp_path / "lora")
    saved = json.loads((directory / "blockskip_plan.json").read_text())
    assert saved["format"] == "blockskip.plan"
    assert saved["skip"] == {"leading": 4, "trailing": 1}
    assert saved["model"]["class"] == "FluxTransformer2DModel"
