"""How the dynamic-computation patches behave: gate temperature and threshold, router start,
groups, the FLOPs target and its schedule (defaults from DyDiT's official code, see
docs/research_dydit_notes.md).

    >>> settings = DynamicSettings(target=0.7)
    >>> [round(settings.target_at(step), 2) for step in (0, 100, 2600, 5100, 9000)]
    [1.0, 1.0, 0.85, 0.7, 0.7]
"""

from __future__ import annotations

from dataclasses import dataclass


class DynamicSettingsError(ValueError):
    """Settings that cannot describe a dynamic-computation run."""


@dataclass(frozen=True)
class DynamicSettings:
    """`target` is λ, the share of the kept blocks' attention and MLP FLOPs to spend; it is held at
    1.0 for `hold_steps`, then ramps linearly to `target` over `ramp_steps`. `loss_weight` scales
    (mean FLOPs ratio − λ)². Routers start open (`width_bias`, `token_bias`: large logits).
    `router_input` is what the width routers read: "temb", the block's conditioning (timestep,
    guidance and pooled text), or "timestep", `timestep_width` sinusoidal features of t alone (as
    DyDiT; the masks then depend only on t). `single_block_tokens` is what a closed image token
    drops in single blocks: "mlp", its MLP only, or "block", its whole block update, attention
    output included (as DyFLUX)."""

    target: float = 0.7
    tau: float = 5.0
    threshold: float = 0.5
    width_bias: float = 15.0
    token_bias: float = 35.0
    token_hidden_ratio: int = 16
    loss_weight: float = 2.0
    hold_steps: int = 100
    ramp_steps: int = 5000
    router_input: str = "temb"
    timestep_width: int = 256
    single_block_tokens: str = "mlp"

    def __post_init__(self):
        problems = []
        if not 0 < self.target <= 1:
            problems.append(f"target must lie in (0, 1], got {self.target}")
        if not self.tau > 0:
            problems.append(f"tau must be positive, got {self.tau}")
        if not 0 < self.threshold < 1:
            problems.append(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.router_input not in ("temb", "timestep"):
            problems.append(f"router_input must be 'temb' or 'timestep', got {self.router_input!r}")
        if self.single_block_tokens not in ("mlp", "block"):
            problems.append(f"single_block_tokens must be 'mlp' or 'block', got {self.single_block_tokens!r}")
        if self.timestep_width < 2 or self.timestep_width % 2:
            problems.append(f"timestep_width must be an even number >= 2, got {self.timestep_width}")
        if self.hold_steps < 0 or self.ramp_steps < 0 or self.token_hidden_ratio < 1:
            problems.append("hold_steps and ramp_steps must be >= 0 and token_hidden_ratio >= 1")
        if problems:
            raise DynamicSettingsError("invalid dynamic settings: " + "; ".join(problems))

    def target_at(self, step: int) -> float:
        """λ at training step `step`: 1.0, then a linear ramp to `target`."""
        if step <= self.hold_steps:
            return 1.0
        progress = 1.0 if self.ramp_steps == 0 else min(1.0, (step - self.hold_steps) / self.ramp_steps)
        return 1.0 - (1.0 - self.target) * progress
