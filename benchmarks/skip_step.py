"""Training-step time and peak memory of block skipping against the unskipped baseline, in one run.

    python benchmarks/skip_step.py [--device cpu|cuda] [--steps 10] [--sizes tiny,small]

For each model size: full LoRA, then online residuals and naive skip at 30% and 50% skip. Memory is
the weights in the module tree plus the measured peak of one training step (CUDA:
max_memory_allocated; CPU: counted storages). Times are medians over `--steps` steps after one
warm-up step. Ratios are against the full-LoRA row of the same size, measured in the same run.
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig

from blockskip import apply_block_skip, lora_target_modules, measure_peak_memory
from blockskip.estimate.memory import format_bytes
from blockskip.shapes.demo_data import build_demo_model

SIZES = {
    # name: (config overrides, tokens per image, batch)
    "tiny": ({}, 64, 4),
    "small": ({"num_layers": 6, "num_single_layers": 12, "num_attention_heads": 8, "joint_attention_dim": 128}, 256, 2),
}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
RUNS = [
    ("full LoRA", None),
    ("online 30%", {"skip": {"ratio": 0.3}}),
    ("online 50%", {"skip": {"ratio": 0.5}}),
    ("naive 50%", {"skip": {"ratio": 0.5}, "residuals": {"mode": "none"}}),
]


def _inputs(model, tokens, batch, device):
    generator = torch.Generator().manual_seed(0)
    config = model.config
    return dict(
        hidden_states=torch.randn(batch, tokens, config.in_channels, generator=generator).to(device),
        encoder_hidden_states=torch.randn(batch, 16, config.joint_attention_dim, generator=generator).to(device),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=generator).to(device),
        timestep=torch.rand(batch, generator=generator).to(device),
        img_ids=torch.zeros(tokens, 3, device=device),
        txt_ids=torch.zeros(16, 3, device=device),
        return_dict=False,
    )


def measure(size: str, plan, steps: int, device: str):
    overrides, tokens, batch = SIZES[size]
    model = build_demo_model(seed=0, **overrides)
    model.requires_grad_(False)
    if plan is not None:
        apply_block_skip(model, plan)
    model.to(device)
    targets = lora_target_modules(model, TARGETS) if plan is not None else TARGETS
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = _inputs(model, tokens, batch, device)

    def step():
        model(**inputs)[0].square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with measure_peak_memory(device) as usage:
        step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return weights + usage.peak_increase_bytes, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", default="tiny,small")
    args = parser.parse_args()
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for size in args.sizes.split(","):
        print(f"\n{size} model ({SIZES[size][1]} image tokens, batch {SIZES[size][2]}, LoRA rank 16)")
        print(f"{'run':<12} {'memory':>10} {'ratio':>6} {'s/step':>8} {'ratio':>6}")
        baseline = None
        for name, plan in RUNS:
            memory, seconds = measure(size, plan, args.steps, args.device)
            baseline = baseline or (memory, seconds)
            print(
                f"{name:<12} {format_bytes(memory):>10} {memory / baseline[0]:>6.2f} "
                f"{seconds:>8.4f} {seconds / baseline[1]:>6.2f}"
            )


if __name__ == "__main__":
    main()
