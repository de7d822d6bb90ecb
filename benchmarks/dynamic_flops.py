"""Hard-mode DyDiT gating: measured FLOPs and time of one forward as more heads, MLP groups and
tokens close, against the same model with every gate open (measured in the same run).

    python benchmarks/dynamic_flops.py

A FLUX-architecture model (4 double + 8 single blocks, width 256, 8 heads, 1024 image tokens,
64 text tokens) with random weights; routers are set by hand to close a share of the optional
heads and groups and of the image tokens (no training): this measures what hard mode saves for
a given gate pattern, not what a trained router chooses. "FLOPs ratio" counts the whole forward
(embedders, norms' linears, text-stream MLPs included); "counted ratio" is the gated share the
FLOPs penalty sees.
"""

from __future__ import annotations

import time

import torch
from diffusers import FluxTransformer2DModel

from blockskip.dynamic import apply_dynamic_computation
from blockskip.estimate.accounting import FlopCounter


def forward_cost(model, inputs, repeats: int = 3) -> tuple[int, float]:
    counter = FlopCounter()
    with torch.no_grad():
        with counter:
            model(**inputs)
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
    return counter.total, (time.perf_counter() - started) / repeats


def main() -> None:
    torch.manual_seed(0)
    model = FluxTransformer2DModel(num_layers=4, num_single_layers=8, attention_head_dim=32, num_attention_heads=8,
                                   joint_attention_dim=64, pooled_projection_dim=64, in_channels=16,
                                   axes_dims_rope=(8, 12, 12)).eval()
    side, text = 32, 64
    ids = torch.zeros(side * side, 3)
    ids[:, 1], ids[:, 2] = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    inputs = dict(hidden_states=torch.randn(1, side * side, 16), encoder_hidden_states=torch.randn(1, text, 64),
                  pooled_projections=torch.randn(1, 64), timestep=torch.tensor([0.5]), img_ids=ids,
                  txt_ids=torch.zeros(text, 3), return_dict=False)
    handle = apply_dynamic_computation(model)
    handle.hard = True
    base_flops, base_time = forward_cost(model, inputs)
    print(f"{'closed heads/groups':>20} {'closed tokens':>14} {'FLOPs ratio':>12} {'time ratio':>11} {'counted ratio':>14}")
    for share, tokens_closed in ((0.0, False), (0.25, False), (0.5, False), (0.75, False), (0.0, True), (0.5, True)):
        with torch.no_grad():
            for routers in handle.routers.values():
                closed = round(share * routers.heads.bias.numel())
                for router in (routers.heads, routers.groups):
                    router.bias.fill_(15.0)
                    router.bias[:closed] = -50.0
                routers.tokens[2].weight.zero_()
                routers.tokens[2].bias.fill_(-50.0 if tokens_closed else 35.0)
        flops, seconds = forward_cost(model, inputs)
        counted = float(handle.flops_ratio().mean())
        print(f"{share:>20.2f} {'all' if tokens_closed else 'none':>14} {flops / base_flops:>12.2f} {seconds / base_time:>11.2f} {counted:>14.2f}")
    handle.remove()


if __name__ == "__main__":
    main()
