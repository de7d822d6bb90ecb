"""Training-step time of cached vs online residuals vs full LoRA, and the time spent waiting on the bank.

    python benchmarks/cached_step.py [--steps 12] [--sizes tiny,small] [--ratio 0.5]

Every run trains the same LoRA on the same scheduled batches (TrainingSchedule + collator). The
cached run first precomputes its bank (timed separately), then trains with `handle.step(keys,
next_keys=...)` so the next step's entries load in the background; the bank-wait share is the
time `handle.step` blocked divided by the training time. The cached run is timed twice: with
the per-step input check (the default: every forward's inputs hashed and compared with the
bank's record) and with it off, so the check's cost is a ratio of the same run. Last, the model
fingerprint a bank is opened with (every byte of every frozen weight hashed) is timed against the
precompute, and the hash rate on 1 GiB of bf16 extrapolates it to FLUX.1-dev's 23.8 GB (an
estimate: a CPU with more cores hashes on more threads). Ratios are against full LoRA measured
in the same run. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from peft import LoraConfig
from torch.utils.data import DataLoader

from blockskip import (
    BlockSkipPlan,
    DynamicPatchCollator,
    TrainingSchedule,
    apply_block_skip,
    lora_target_modules,
    precompute_residuals,
)
from blockskip.residuals.fingerprint import model_fingerprint, weights_hash
from blockskip.shapes.demo_data import CaptionEmbedder, build_demo_model, pack_images, subject_images

SIZES = {
    # name: (model overrides, image side before cropping, crop min/max)
    "tiny": ({}, 48, (32, 48)),
    "small": ({"num_layers": 6, "num_single_layers": 12, "num_attention_heads": 8, "joint_attention_dim": 128, "pooled_projection_dim": 128}, 96, (64, 96)),
}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class Run:
    def __init__(self, size: str, steps: int, batch: int, skip_ratio: float, bank: str):
        overrides, side, (low, high) = SIZES[size]
        self.overrides = overrides
        patches = {"min_size": low, "max_size": high, "multiple_of": 16}
        self.online = BlockSkipPlan.from_dict({"skip": {"ratio": skip_ratio}, "patches": patches})
        self.cached = BlockSkipPlan.from_dict(
            {**self.online.to_dict(), "residuals": {"mode": "cached", "bank": bank}, "offload": "drop"}
        )
        images = list(subject_images(8, size=side))
        self.schedule = TrainingSchedule([(side, side)] * len(images), steps, batch, patches=self.online, seed=0)
        collator = DynamicPatchCollator(self.online, convention="sigma")
        self.loader = DataLoader(self.schedule.dataset(images), batch_size=batch, shuffle=False, collate_fn=collator)
        dim = build_demo_model(**overrides).config.joint_attention_dim
        self.text, self.pooled = CaptionEmbedder(dim=dim)(["a photo of sks ring"])

    def inputs(self, batch, step):
        latents, ids = pack_images(batch["pixel_values"])
        noise = self.schedule.noise(self.schedule.step(step), latents.shape[1:])
        sigma = batch["noise_level"]
        rows = latents.shape[0]
        kwargs = dict(
            hidden_states=(1 - sigma[:, None, None]) * latents + sigma[:, None, None] * noise,
            encoder_hidden_states=self.text.expand(rows, -1, -1),
            pooled_projections=self.pooled.expand(rows, -1),
            timestep=sigma,
            img_ids=ids,
            txt_ids=torch.zeros(self.text.shape[1], 3),
        )
        return latents, noise, kwargs

    def samples(self):
        for step, batch in enumerate(self.loader):
            kwargs = self.inputs(batch, step)[2]
            for row, key in enumerate(batch["blockskip_key"]):
                yield key, {k: v[row : row + 1] if k not in ("img_ids", "txt_ids") else v for k, v in kwargs.items()}

    def train(self, plan, check_inputs: bool = True):
        model = build_demo_model(**self.overrides)
        handle = None
        if plan is not None:
            handle = apply_block_skip(model, plan, schedule=self.schedule if plan.residuals.mode == "cached" else None)
            if handle.cache is not None:
                handle.cache.check_inputs = check_inputs
        model.requires_grad_(False)
        targets = lora_target_modules(model, TARGETS) if handle else TARGETS
        model.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=targets))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for step, batch in enumerate(self.loader):
            start = time.perf_counter()
            latents, noise, kwargs = self.inputs(batch, step)
            if handle is not None and handle.cache is not None:
                upcoming = self.schedule.keys(step + 1) if step + 1 < len(self.schedule) else None
                context = handle.step(batch["blockskip_key"], next_keys=upcoming)
            else:
                context = torch.enable_grad()
            with context:
                loss = torch.nn.functional.mse_loss(model(**kwargs, return_dict=False)[0], noise - latents)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        wait = handle.cache.wait_seconds if handle is not None and handle.cache is not None else 0.0
        return statistics.median(times[1:]), wait / sum(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--sizes", default="tiny,small")
    args = parser.parse_args()
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; skip ratio {args.ratio}")
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as work:
            run = Run(size, args.steps, args.batch, args.ratio, f"{work}/bank")
            start = time.perf_counter()
            summary = precompute_residuals(
                build_demo_model(**run.overrides), run.cached, run.samples(), f"{work}/bank",
                schedule=run.schedule, progress=False,
            )
            precompute_seconds = time.perf_counter() - start
            full, _ = run.train(None)
            online, _ = run.train(run.online)
            cached, wait_share = run.train(run.cached)
            unchecked, _ = run.train(run.cached, check_inputs=False)
            model = build_demo_model(**run.overrides)
            start = time.perf_counter()
            model_fingerprint(model)
            fingerprint_seconds = time.perf_counter() - start
            weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        print(f"\n{size} model, {args.steps} steps × batch {args.batch}")
        print(f"  precompute: {summary.entries} entries, {summary.bytes_written / 2**20:.2f} MiB, {precompute_seconds:.2f} s")
        print(f"  {'run':<24} {'s/step':>8} {'ratio':>6}")
        rows = (("full", full), ("online", online), ("cached", cached), ("cached, input check off", unchecked))
        for name, seconds in rows:
            print(f"  {name:<24} {seconds:>8.4f} {seconds / full:>6.2f}")
        print(f"  cached: {wait_share:.1%} of training time spent waiting on the bank; "
              f"the input check costs {cached / unchecked - 1:+.1%} of a cached step")
        print(f"  model fingerprint: {weight_bytes / 2**20:.1f} MiB of weights in {fingerprint_seconds:.3f} s "
              f"= {fingerprint_seconds / precompute_seconds:.1%} of the precompute")
    print()
    print(hash_rate_line())


def hash_rate_line(gib: float = 1.0) -> str:
    """The whole-weights hash rate on `gib` GiB of bf16 tensors, and what it means for FLUX.1-dev."""
    tensors = [(f"w{i}", torch.zeros(2**14, 2**14, dtype=torch.bfloat16)) for i in range(int(gib * 2))]  # 512 MiB each
    start = time.perf_counter()
    weights_hash(tensors)
    seconds = time.perf_counter() - start
    rate = gib * 2**30 / seconds
    flux_bytes = 23.8e9
    return (f"hash rate (measured): {rate / 1e9:.2f} GB/s on {gib:.0f} GiB of bf16; "
            f"FLUX.1-dev's {flux_bytes / 1e9:.1f} GB would take {flux_bytes / rate:.1f} s (estimated from that rate)")


if __name__ == "__main__":
    main()
