"""How close is the fake-tensor estimate to a real training step's peak? Tiny and small models.

For each model family, each plan runs the same LoRA step (`blockskip.training.training_step`) twice: on
real tensors, measured, and on fake tensors, estimated (`blockskip.estimate.calibration.calibrate`).
Measurements on the CPU:

- `measured`: `blockskip.estimate.memory.measure_peak_memory` (counted tensor storages);
- `allocator`: the CPU allocator's own allocation/free events (`torch.profiler`), recorded from
  before the model is built — the ground truth when fp8 weights are recast on every call, which
  `measure_peak_memory` miscounts.

On a CUDA machine the same rows run again on the GPU (`torch.cuda.max_memory_allocated`).
Peak = resident bytes (weights, LoRA, optimizer state) + the step's peak increase. Prints, asserts
nothing. The estimator's target is within 10%.

    python benchmarks/estimate_calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from blockskip.estimate.calibration import calibrate
from blockskip.estimate.memory import format_bytes

# Tiny configs: width 64 (2 heads × 32), a few blocks. Sizes the configs accept.
_TINY = {
    "FluxTransformer2DModel": dict(num_layers=3, num_single_layers=4, attention_head_dim=32, num_attention_heads=2,
                                   in_channels=16, joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=[8, 12, 12]),
    "ChromaTransformer2DModel": dict(num_layers=3, num_single_layers=4, attention_head_dim=32, num_attention_heads=2,
                                     in_channels=16, joint_attention_dim=24, axes_dims_rope=[8, 12, 12],
                                     approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2),
    "QwenImageTransformer2DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=16,
                                        out_channels=4, joint_attention_dim=24, axes_dims_rope=[8, 12, 12]),
    "SD3Transformer2DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=4, out_channels=4,
                                  sample_size=8, patch_size=2, joint_attention_dim=24, caption_projection_dim=64,
                                  pooled_projection_dim=12, pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=[0]),
    "SanaTransformer2DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=4, out_channels=4,
                                   num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
                                   caption_channels=24, sample_size=4, patch_size=1),
    "WanTransformer3DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=4, out_channels=4,
                                  text_dim=24, freq_dim=32, ffn_dim=128, patch_size=[1, 2, 2], rope_max_seq_len=32),
    "HunyuanVideoTransformer3DModel": dict(num_layers=3, num_single_layers=4, num_refiner_layers=1, attention_head_dim=32,
                                           num_attention_heads=2, in_channels=4, out_channels=4, mlp_ratio=2.0,
                                           text_embed_dim=24, pooled_projection_dim=12, rope_axes_dim=[8, 12, 12]),
    "LTXVideoTransformer3DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=8,
                                       out_channels=8, cross_attention_dim=64, caption_channels=24),
    "Flux2Transformer2DModel": dict(num_layers=3, num_single_layers=4, attention_head_dim=32, num_attention_heads=2,
                                    in_channels=16, joint_attention_dim=24, timestep_guidance_channels=32,
                                    axes_dims_rope=[8, 8, 8, 8]),
    "CogVideoXTransformer3DModel": dict(num_layers=4, attention_head_dim=32, num_attention_heads=2, in_channels=4,
                                        out_channels=4, time_embed_dim=16, text_embed_dim=24, sample_width=8,
                                        sample_height=8, sample_frames=5, max_text_seq_length=7),
    "Lumina2Transformer2DModel": dict(num_layers=4, num_refiner_layers=1, hidden_size=64, num_attention_heads=2,
                                      num_kv_heads=1, multiple_of=16, in_channels=4, sample_size=8, cap_feat_dim=24,
                                      axes_dim_rope=[8, 12, 12], axes_lens=[32, 32, 32]),
    "AuraFlowTransformer2DModel": dict(num_mmdit_layers=3, num_single_dit_layers=4, attention_head_dim=32,
                                       num_attention_heads=2, in_channels=4, out_channels=4, sample_size=8,
                                       joint_attention_dim=24, caption_projection_dim=64, pos_embed_max_size=16),
}
_SIDE = {"SanaTransformer2DModel": 128, "LTXVideoTransformer3DModel": 128}
_FRAMES = {"WanTransformer3DModel": 5, "HunyuanVideoTransformer3DModel": 5, "LTXVideoTransformer3DModel": 9,
           "CogVideoXTransformer3DModel": 5}

# Small: a FLUX-architecture model of ~110M parameters at 256 px (256 image + 64 text tokens).
_SMALL_FLUX = dict(num_layers=4, num_single_layers=8, attention_head_dim=64, num_attention_heads=8, in_channels=64,
                   joint_attention_dim=512, pooled_projection_dim=256, axes_dims_rope=[8, 28, 28], guidance_embeds=True)

_PLANS = {
    "skip": {"skip": {"leading": 2, "trailing": 1}},
    "skip+ckpt": {"skip": {"leading": 2, "trailing": 1}, "kept_blocks": {"gradient_checkpointing": True}},
    "skip+fp8": {"skip": {"leading": 2, "trailing": 1}, "kept_blocks": {"storage_dtype": "float8_e4m3fn"}},
    "skip+fp8+ckpt": {"skip": {"leading": 2, "trailing": 1},
                      "kept_blocks": {"storage_dtype": "float8_e4m3fn", "gradient_checkpointing": True}},
    "no skip": {},
}


def _row(label: str, plan_name: str, model: dict, device: str, allocator: bool, **options) -> None:
    started = time.perf_counter()
    plan = _PLANS[plan_name]
    result = calibrate(model, plan, device=device, label=label, **options)
    cells = [f"{label:32}", f"{plan_name:14}", f"{device:5}", f"{format_bytes(result.measured.peak_bytes):>10}",
             f"{format_bytes(result.estimated_peak):>10}", f"{result.error:+7.1%}"]
    if allocator:
        truth = calibrate(model, plan, device=device, label=label, method="allocator", **options)
        cells += [f"{format_bytes(truth.measured.peak_bytes):>10}", f"{truth.error:+7.1%}"]
    else:
        cells += [f"{'':>10}", f"{'':>7}"]
    print("  ".join(cells) + f"  {time.perf_counter() - started:5.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="FLUX and Wan only, no small model")
    parser.add_argument("--families", help="comma-separated class names (default: all); no small model")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'model':32}  {'plan':14}  {'dev':5}  {'measured':>10}  {'estimate':>10}  {'error':>7}  "
          f"{'allocator':>10}  {'error':>7}")
    families = ["FluxTransformer2DModel", "WanTransformer3DModel"] if args.quick else list(_TINY)
    if args.families:
        families = args.families.split(",")
    for device in devices:
        for name in families:
            model = {"_class_name": name, **_TINY[name]}
            options = dict(resolution=_SIDE.get(name, 64), frames=_FRAMES.get(name), text_length=7, batch_size=2)
            for plan_name in ("no skip", "skip", "skip+ckpt", "skip+fp8", "skip+fp8+ckpt"):
                if device == "cpu" or "fp8" not in plan_name or torch.cuda.get_device_capability()[0] >= 8:
                    _row(f"tiny {name.removesuffix('Model')}", plan_name, model, device, device == "cpu", **options)
        if not (args.quick or args.families):
            small = {"_class_name": "FluxTransformer2DModel", **_SMALL_FLUX}
            for plan_name in ("no skip", "skip", "skip+ckpt", "skip+fp8+ckpt"):
                dtype = "bfloat16" if device == "cuda" else "float32"
                _row("small FLUX (110M)", plan_name, small, device, device == "cpu", resolution=256, text_length=64,
                     dtype=dtype)


if __name__ == "__main__":
    main()
