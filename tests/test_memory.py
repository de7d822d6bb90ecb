"""blockskip.estimate.memory counts CPU storages correctly, and block skipping lowers a training step's peak."""

import torch
from peft import LoraConfig

from blockskip import apply_block_skip, lora_target_modules, measure_peak_memory
from blockskip.estimate.memory import format_bytes
from blockskip.shapes.demo_data import build_demo_model


def test_counts_allocations_and_frees():
    with measure_peak_memory("cpu") as usage:
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(1 << 20, dtype=torch.uint8)
        view = a[10:]  # a view shares storage: not counted twice
        del a, b, view
        c = torch.empty(1 << 19, dtype=torch.uint8)
        del c
    assert usage.peak_increase_bytes == 2 << 20


def test_preexisting_tensors_are_the_baseline():
    weights = torch.zeros(1 << 18)
    with measure_peak_memory("cpu") as usage:
        weights.add_(1)  # in place: nothing new
    assert usage.baseline_bytes >= weights.numel() * 4
    assert usage.peak_increase_bytes == 0


def test_backward_is_measured():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(8, 256)
    with measure_peak_memory("cpu") as usage:
        layer(x).sum().backward()
    assert usage.peak_increase_bytes >= 256 * 256 * 4  # the weight gradient


def _step_peak(plan):
    model = build_demo_model(seed=0)
    model.requires_grad_(False)
    if plan:
        apply_block_skip(model, plan)
        targets = lora_target_modules(model, ["to_q", "to_k", "to_v", "to_out.0"])
    else:
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
    model.add_adapter(LoraConfig(r=8, target_modules=targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(4, 64, 48, generator=generator),
        encoder_hidden_states=torch.randn(4, 5, 64, generator=generator),
        pooled_projections=torch.randn(4, 64, generator=generator),
        timestep=torch.rand(4, generator=generator),
        img_ids=torch.zeros(64, 3),
        txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )
    with measure_peak_memory("cpu") as usage:
        model(**inputs)[0].square().mean().backward()
        optimizer.step()
    return usage.peak_increase_bytes


def test_half_skip_lowers_the_training_step_peak():
    full = _step_peak(None)
    skipped = _step_peak({"skip": {"ratio": 0.5}})
    print(f"\nstep peak: full {format_bytes(full)}, 50% skip {format_bytes(skipped)}, ratio {skipped / full:.2f}")
    assert skipped < full
