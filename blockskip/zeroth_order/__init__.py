"""Forward-only training: zeroth-order steps, BP-low / ZO-high selective optimization, and
zeroth-order textual inversion with subspace gradients (see docs/zeroth_order.md)."""

from .optimizer import ZerothOrderOptimizer, ZerothOrderResult, forwards_per_step
from .selective import SelectiveOptimization, TimestepAwareProbability
from .subspace import SubspaceGradient
from .textual_inversion import ZerothOrderTextualInversion, embedding_row

__all__ = [
    "SelectiveOptimization",
    "SubspaceGradient",
    "TimestepAwareProbability",
    "ZerothOrderOptimizer",
    "ZerothOrderResult",
    "ZerothOrderTextualInversion",
    "embedding_row",
    "forwards_per_step",
]
