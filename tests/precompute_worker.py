"""Precompute a bank from tiny FLUX under torchrun (2 CPU ranks); run by tests/test_cached_distributed.py."""

import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from blockskip.training.precompute import precompute_residuals  # noqa: E402
from tiny_models import build_tiny  # noqa: E402


def samples(case, count=5):
    result = []
    for index in range(count):
        kwargs = case.inputs(seed=index, batch=1)
        kwargs.pop("return_dict")
        result.append((f"e{index}", kwargs))
    return result


if __name__ == "__main__":
    distributed = len(sys.argv) > 2 and sys.argv[2] == "distributed"
    if distributed:
        dist.init_process_group("gloo")
    case = build_tiny("FluxTransformer2DModel")
    precompute_residuals(case.model, {"skip": {"leading": 4, "trailing": 2}}, samples(case), sys.argv[1],
                         chunk_size=2, progress=False)
    if distributed:
        dist.destroy_process_group()
