"""A zeroth-order (SPSA / MeZO-style) step for any set of tensors: forward passes only, no backward.

For a random direction z ~ N(0, I) over all trainable tensors, the **central** estimator evaluates
the loss at θ + εz and θ − εz; g = (L₊ − L₋) / 2ε estimates the directional derivative ∇L·z. The
**forward** estimator (ZOODiP's RGE) evaluates L(θ) once and L(θ + εz) per query, g = (L₊ − L)/ε:
n + 1 forwards for n queries instead of 2n. The gradient estimate is ĝ = mean over queries of g·z.
Everything runs under `torch.no_grad()`, so a step's peak memory is that of a forward pass.

Updates: `"sgd"` (θ ← θ − lr·ĝ, MeZO) regenerates each z from its seed (perturb, flip, update)
and never stores it whole; `"adam"` (ZOAdam, as MeZO and ZOODiP use it) materialises ĝ and keeps
Adam's two moments, three tensors the size of θ. A `gradient_transform` (e.g. `SubspaceGradient`)
also works on the materialised ĝ.

The closure must compute the same loss function every time — same batch, same diffusion noise,
same timestep — so that only θ differs between evaluations; draw those outside the closure.

Restoring θ after the evaluations is exact by default: the trainable tensors are copied once per
step (LoRA- or embedding-sized, small beside the frozen model) and copied back, so a zero update
leaves them bit-identical. `exact_restore=False` restores arithmetically instead, as MeZO does,
saving that copy at the cost of rounding drift of about one ulp a step.

Defaults follow MeZO (Malladi et al., 2023) for LoRA: central estimator, ε = 1e-3, one query, SGD
(its LoRA learning rates were 1e-4 and 5e-5). ZOODiP's textual inversion: forward estimator,
ε = 1e-3, two queries, Adam at lr 5e-3 (its script passes 1e-2).

Example:
    >>> import torch
    >>> weight = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    >>> optimizer = ZerothOrderOptimizer([weight], lr=0.1, epsilon=1e-3, seed=0)
    >>> for _ in range(300):
    ...     result = optimizer.step(lambda: (weight**2).sum())
    >>> bool(weight.abs().max() < 0.1)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

Closure = Callable[[], "torch.Tensor | float"]


@dataclass(frozen=True)
class ZerothOrderResult:
    """What one step saw: the mean of L₊ and L₋ (the loss at θ, to second order), each query's
    projected gradient g and the seed its direction was drawn from."""

    loss: float
    projected_gradients: tuple[float, ...]
    seeds: tuple[int, ...]


ESTIMATORS = ("central", "forward")
UPDATES = ("sgd", "adam")


def forwards_per_step(estimator: str = "central", queries: int = 1) -> int:
    """Forward passes one step runs: 2 per query (central), or 1 + 1 per query (forward)."""
    if estimator not in ESTIMATORS or queries < 1:
        raise ValueError(f"estimator is one of {ESTIMATORS} (got {estimator!r}) and queries >= 1 (got {queries})")
    return 2 * queries if estimator == "central" else queries + 1


class ZerothOrderOptimizer:
    """Zeroth-order steps on `params` (see the module doc): LoRA parameters
    (`[p for p in model.parameters() if p.requires_grad]`), or any tensors updated in place, such as
    a view of one embedding-table row.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-4,
        epsilon: float = 1e-3,
        queries: int = 1,
        estimator: str = "central",
        update: str = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
        adam_epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
        exact_restore: bool = True,
        gradient_transform: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    ):
        self.params = list(params)  # any tensors: parameters, or views such as one row of an embedding table
        if not self.params:
            raise ValueError("ZerothOrderOptimizer got no tensors to optimize")
        if not epsilon > 0 or not lr >= 0 or queries < 1:
            raise ValueError(f"need epsilon > 0, lr >= 0 and queries >= 1 (got {epsilon}, {lr}, {queries})")
        if estimator not in ESTIMATORS or update not in UPDATES:
            raise ValueError(f"estimator is one of {ESTIMATORS} (got {estimator!r}); update one of {UPDATES} (got {update!r})")
        self.lr, self.epsilon, self.queries, self.weight_decay = lr, epsilon, queries, weight_decay
        self.estimator, self.update, self.betas, self.adam_epsilon = estimator, update, betas, adam_epsilon
        self.seed, self.exact_restore, self.gradient_transform = seed, exact_restore, gradient_transform
        self.steps = 0
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def query_seed(self, step: int, query: int) -> int:
        """The seed of query `query` at step `step`: a pure function, so a run can be replayed."""
        return (self.seed * 1_000_003 + step * 1_009 + query) % 2**63

    def directions(self, seed: int) -> list[torch.Tensor]:
        """The direction z of `seed`, one tensor per trainable tensor, regenerated identically every call."""
        generators: dict[torch.device, torch.Generator] = {}
        drawn = []
        for param in self.params:
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            drawn.append(torch.randn(param.shape, generator=generators[param.device], device=param.device, dtype=param.dtype))
        return drawn

    def _shift(self, seed: int, scale: float) -> None:
        for param, z in zip(self.params, self.directions(seed)):
            param.add_(z, alpha=scale)

    @staticmethod
    def _value(loss: "torch.Tensor | float") -> float:
        return float(loss.detach()) if torch.is_tensor(loss) else float(loss)  # float64 keeps a float64 loss exact

    @torch.no_grad()
    def estimate(self, closure: Closure, seeds: tuple[int, ...]) -> tuple[list[float], float]:
        """Each seed's projected gradient g, and the loss at θ (central: the mean of L₊ and L₋).

        θ is back where it was afterwards (see the module doc on exact restore).
        """
        saved = [param.detach().clone() for param in self.params] if self.exact_restore else None

        def restore(seed: int, shifted: float) -> None:
            if saved is not None:
                for param, original in zip(self.params, saved):
                    param.copy_(original)
            else:
                self._shift(seed, -shifted)

        gradients, losses = [], []
        base = self._value(closure()) if self.estimator == "forward" else None
        for seed in seeds:
            self._shift(seed, self.epsilon)
            plus = self._value(closure())
            if base is None:
                self._shift(seed, -2 * self.epsilon)
                minus = self._value(closure())
                restore(seed, -self.epsilon)
                gradients.append((plus - minus) / (2 * self.epsilon))
                losses.append((plus + minus) / 2)
            else:
                restore(seed, self.epsilon)
                gradients.append((plus - base) / self.epsilon)
        return gradients, base if base is not None else sum(losses) / len(losses)

    def gradient(self, seeds: tuple[int, ...], projected: list[float]) -> list[torch.Tensor]:
        """ĝ = mean over queries of g·z, materialised (with `gradient_transform` applied)."""
        total = [torch.zeros_like(param) for param in self.params]
        for seed, g in zip(seeds, projected):
            for accumulated, z in zip(total, self.directions(seed)):
                accumulated.add_(z, alpha=g / len(seeds))
        return self.gradient_transform(total) if self.gradient_transform is not None else total

    @torch.no_grad()
    def step(self, closure: Closure) -> ZerothOrderResult:
        """One update from `queries` estimates; returns what it measured."""
        seeds = tuple(self.query_seed(self.steps, query) for query in range(self.queries))
        projected, loss = self.estimate(closure, seeds)
        if self.weight_decay and self.lr:
            for param in self.params:
                param.mul_(1 - self.lr * self.weight_decay)
        if self.update == "adam":
            self._adam(self.gradient(seeds, projected))
        elif self.gradient_transform is not None:
            for param, g in zip(self.params, self.gradient(seeds, projected)):
                param.add_(g, alpha=-self.lr)
        else:
            for seed, g in zip(seeds, projected):
                if g and self.lr:
                    self._shift(seed, -self.lr * g / len(seeds))
        self.steps += 1
        return ZerothOrderResult(loss, tuple(projected), seeds)

    def _adam(self, gradients: list[torch.Tensor]) -> None:
        beta1, beta2 = self.betas
        if self.moments is None:
            self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        step = self.steps + 1
        for param, g, (first, second) in zip(self.params, gradients, self.moments):
            first.mul_(beta1).add_(g, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denominator = (second / (1 - beta2**step)).sqrt_().add_(self.adam_epsilon)
            param.addcdiv_(first, denominator, value=-self.lr / (1 - beta1**step))

    def state_dict(self) -> dict:
        state = {"steps": self.steps, "seed": self.seed}
        if self.moments is not None:
            state["moments"] = [(m.clone(), v.clone()) for m, v in self.moments]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.seed = int(state["steps"]), int(state["seed"])
        self.moments = [(m.clone(), v.clone()) for m, v in state["moments"]] if "moments" in state else None
