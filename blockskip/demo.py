"""`blockskip demo`: train one LoRA three ways on the embedded default and compare them.

The three runs share the model weights, the subject images, the seeds and the optimizer:
- full LoRA: every block trains;
- BlockSkip (online): the plan's leading and trailing blocks are skipped and their residuals
  computed on the fly (DiT-BlockSkip);
- naive skip: the same blocks are skipped with no residual (the HollowedNet-style ablation).

The table reports the training-step memory (weights in the module tree plus the measured peak of
the first step), the time per step, the final loss, and how far the skipped model's output is
from the full model's before training. The BlockSkip LoRA is then saved with its plan and
loaded into a fresh, unskipped model with diffusers' own `load_lora_adapter` as a check.

Example (about a minute on two CPU cores):
    $ blockskip demo --steps 30 --out blockskip-demo
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .demo_data import SUBJECT_PROMPT, CaptionEmbedder, build_demo_model, pack_images, subject_images
from .lora import LORA_WEIGHT_NAME, lora_target_modules, save_lora
from .memory import format_bytes, measure_peak_memory
from .plan import BlockSkipPlan
from .skip import apply_block_skip, get_block_skip

DEFAULT_DEMO_PLAN = {"skip": {"ratio": 0.5}, "residuals": {"mode": "online"}, "offload": "cpu"}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@dataclass
class RunResult:
    name: str
    memory_bytes: int
    seconds_per_step: float
    final_loss: float
    initial_output_error: float
    trainable_parameters: int


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


class DemoTask:
    """Fixed data, captions, noise and timesteps shared by every run."""

    def __init__(self, steps: int, batch_size: int = 4, seed: int = 0, images: int = 6):
        generator = torch.Generator().manual_seed(seed)
        self.pixels = subject_images(images, seed=seed)
        self.tokens, self.image_ids = pack_images(self.pixels)
        text, pooled = CaptionEmbedder(seed=seed + 1)([SUBJECT_PROMPT])
        self.text, self.pooled = text.expand(batch_size, -1, -1), pooled.expand(batch_size, -1)
        self.text_ids = torch.zeros(text.shape[1], 3)
        self.batches = [torch.randint(0, images, (batch_size,), generator=generator) for _ in range(steps)]
        self.sigmas = [torch.rand(batch_size, generator=generator) for _ in range(steps)]
        self.noise = [torch.randn(batch_size, *self.tokens.shape[1:], generator=generator) for _ in range(steps)]

    def forward(self, model, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(
            hidden_states=latents,
            encoder_hidden_states=self.text,
            pooled_projections=self.pooled,
            timestep=sigma,
            img_ids=self.image_ids,
            txt_ids=self.text_ids,
            return_dict=False,
        )[0]

    def loss(self, model, step: int) -> torch.Tensor:
        """Rectified-flow loss: predict noise − data from x_σ = (1 − σ)·data + σ·noise."""
        clean, noise, sigma = self.tokens[self.batches[step]], self.noise[step], self.sigmas[step]
        noisy = (1 - sigma[:, None, None]) * clean + sigma[:, None, None] * noise
        return torch.nn.functional.mse_loss(self.forward(model, noisy, sigma), noise - clean)

    def probe(self, model) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(model, self.noise[0], torch.full((self.noise[0].shape[0],), 0.7))


def _add_lora(model, rank: int) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    # Explicit names on a skipped model, so the saved adapter config lists only what was trained.
    targets = lora_target_modules(model, LORA_TARGETS) if get_block_skip(model) else LORA_TARGETS
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True))
    return [p for p in model.parameters() if p.requires_grad]


def _module_tree_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def train_one(name: str, task: DemoTask, plan: BlockSkipPlan | None, steps: int, rank: int, seed: int, reference):
    """Train a LoRA on a fresh copy of the demo model; return the result and the model."""
    model = build_demo_model(seed)
    model.requires_grad_(False)
    if plan is not None:
        apply_block_skip(model, plan)
    error = _relative_error(task.probe(model), reference)
    parameters = _add_lora(model, rank)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    model.train()
    losses, times = [], []
    memory = 0
    for step in tqdm(range(steps), desc=f"{name:<22}", leave=False):
        start = time.perf_counter()
        if step == 0:
            with measure_peak_memory("cpu") as usage:
                loss = task.loss(model, step)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            memory = _module_tree_bytes(model) + usage.peak_increase_bytes
        else:
            loss = task.loss(model, step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    model.eval()
    final = sum(losses[-5:]) / len(losses[-5:])
    seconds = sum(times) / max(len(times), 1)
    return RunResult(name, memory, seconds, final, error, sum(p.numel() for p in parameters)), model


def check_reload(model, lora_dir: Path, task: DemoTask, seed: int) -> float:
    """Load the saved LoRA into a fresh unskipped model; relative output difference to `model`."""
    full = build_demo_model(seed)
    with warnings.catch_warnings():
        # PEFT stores long target lists as suffixes (`to_q`), which on the full model also name the
        # skipped blocks; it warns, then loads exactly the saved weights, into the kept blocks only.
        warnings.filterwarnings("ignore", message="While injecting the PEFT adapters", category=RuntimeWarning)
        full.load_lora_adapter(str(lora_dir), weight_name=LORA_WEIGHT_NAME, prefix=None, adapter_name="default")
    return _relative_error(task.probe(full), task.probe(model))


def format_table(results: list[RunResult]) -> str:
    baseline = results[0]
    header = f"{'run':<22} {'memory':>10} {'ratio':>6} {'s/step':>8} {'ratio':>6} {'final loss':>11} {'Δ vs full @0':>13} {'LoRA params':>12}"
    lines = [header, "-" * len(header)]
    for result in results:
        lines.append(
            f"{result.name:<22} {format_bytes(result.memory_bytes):>10} {result.memory_bytes / baseline.memory_bytes:>6.2f} "
            f"{result.seconds_per_step:>8.3f} {result.seconds_per_step / baseline.seconds_per_step:>6.2f} "
            f"{result.final_loss:>11.4f} {result.initial_output_error:>13.2e} {result.trainable_parameters:>12,}"
        )
    return "\n".join(lines)


def run_demo(
    steps: int = 30, plan: BlockSkipPlan | None = None, out: str | Path = "blockskip-demo", seed: int = 0, rank: int = 8
) -> list[RunResult]:
    """Train full LoRA, BlockSkip and naive skip on the embedded default; print and return the table."""
    torch.manual_seed(seed)
    plan = plan or BlockSkipPlan.from_dict(DEFAULT_DEMO_PLAN)
    naive = BlockSkipPlan.from_dict({**plan.to_dict(), "residuals": {"mode": "none", "bank": None}})
    task = DemoTask(steps, seed=seed)
    reference = task.probe(build_demo_model(seed))

    runs = [("full LoRA", None), ("BlockSkip (online)", plan), ("naive skip (no Δ)", naive)]
    results, models = [], {}
    for name, run_plan in runs:
        result, model = train_one(name, task, run_plan, steps, rank, seed, reference)
        results.append(result)
        models[name] = model

    skipped = models["BlockSkip (online)"]
    handle = get_block_skip(skipped)
    out = Path(out)
    lora_dir = save_lora(skipped, out / "lora")
    reload_error = check_reload(skipped, lora_dir, task, seed)

    print(f"\nblockskip demo: {handle.summary()}")
    print(f"{steps} steps, batch 4, LoRA rank {rank}; memory = weights in the module tree + measured peak of a step\n")
    print(format_table(results))
    status = "ok" if reload_error < 1e-4 else "MISMATCH"
    print(
        f"\nSaved the BlockSkip LoRA and its plan to {lora_dir}/ "
        f"({', '.join(sorted(p.name for p in lora_dir.iterdir()))})."
    )
    print(
        f"Reloaded into a fresh full model with load_lora_adapter: output differs from the trained "
        f"skipped model by {reload_error:.2e} (relative) — {status}."
    )
    if status != "ok":
        raise SystemExit("the saved LoRA does not reproduce the trained model")
    return results
