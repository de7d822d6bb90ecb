"""Peak memory and TFLOPs against skip ratio for one model, drawn with Pillow.

`sweep_skip_ratios(model)` prices four settings at each skip ratio of the model's table:

- **baseline**: plain LoRA at the baseline resolution (a horizontal line: it does not skip);
- **paper setting**: online residuals at the BlockSkip training resolution;
- **with fp8**: the same plus fp8 storage of kept weights and gradient checkpointing;
- **with offload**: the same as the paper setting plus group offload and gradient checkpointing;

and `draw_skip_sweep(sweep)` draws two panels (peak GiB, TFLOPs per step) as a PNG-ready image.

Example:
    >>> sweep = {"model": "tiny", "ratios": [0.0, 0.5], "baseline": {"peak_gib": 2.0, "tflops": 4.0},
    ...     "series": {"paper setting": {"peak_gib": [1.5, 1.0], "tflops": [3.0, 2.0]}}}
    >>> draw_skip_sweep(sweep).size
    (1100, 460)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..families.layouts import get_layout
from ..families.presets import resolve_model
from ..families.step_inputs import StepShape
from ..skipping.inspection import model_from_config
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip_table import get_skip_table
from ..training.training_step import DEFAULT_LORA_TARGETS, TrainingSetup
from .step import DTYPES, estimate_step
from .training_memory import step_defaults

GIB = 1024**3
SETTINGS = {
    "paper setting": {},
    "with fp8": {"gradient_checkpointing": True, "storage_dtype": "float8_e4m3fn"},
    "with offload": {"gradient_checkpointing": True, "group_offload": True},
}
_WIDTHS = {"with fp8": 7}  # drawn under "with offload", whose FLOPs are the same (both checkpoint)
_COLOURS = {
    "baseline": (110, 110, 110),
    "paper setting": (31, 119, 180),
    "with fp8": (214, 39, 40),
    "with offload": (44, 160, 44),
}


def sweep_skip_ratios(
    model: str | Path | dict,
    ratios: list[float] | None = None,
    *,
    frames: int | None = None,
    text_length: int | None = None,
    batch_size: int = 1,
    dtype: str = "bfloat16",
    lora_rank: int = 4,
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    optimizer: str = "adamw",
    device: str = "cuda",
    resolution: int | None = None,
    baseline_resolution: int | None = None,
) -> dict[str, Any]:
    """Price the baseline and the three settings at each ratio (the model's table ratios by default)."""
    config, preset, label = resolve_model(model)
    class_name = config["_class_name"]
    num_blocks = get_layout(model_from_config(config)).num_blocks
    if ratios is None:
        ratios = [0.0] + sorted(get_skip_table(class_name, num_blocks).entries or [0.3, 0.4, 0.5])
    side = resolution or (preset.training_resolution if preset else 256)
    base_side = baseline_resolution or (preset.resolution if preset else 512)
    defaults = step_defaults(class_name, preset)
    shape = StepShape(side, side, text_length or defaults["text_length"], batch_size, frames or defaults["frames"])
    setup = TrainingSetup(lora_rank=lora_rank, lora_targets=tuple(lora_targets), optimizer=optimizer)
    torch_dtype = DTYPES[dtype]
    patches = {"min_size": side, "max_size": max(side, base_side)}

    def price(plan: dict, step_shape: StepShape) -> tuple[float, float]:
        estimate = estimate_step(config, BlockSkipPlan.from_dict(plan), step_shape, setup, dtype=torch_dtype, device=device)
        return estimate.peak_bytes / GIB, estimate.flops / 1e12

    base_shape = StepShape(base_side, base_side, shape.text_length, batch_size, shape.frames)
    base_peak, base_flops = price({"patches": {"min_size": base_side, "max_size": base_side}}, base_shape)
    series: dict[str, dict[str, list[float]]] = {}
    for name, kept in SETTINGS.items():
        peaks, flops = [], []
        for ratio in ratios:
            plan: dict[str, Any] = {"patches": patches, "skip": {"ratio": ratio}}
            if kept:
                plan["kept_blocks"] = kept
            peak, tflops = price(plan, shape)
            peaks.append(peak)
            flops.append(tflops)
        series[name] = {"peak_gib": peaks, "tflops": flops}
    return {
        "model": label,
        "resolution": side,
        "baseline_resolution": base_side,
        "ratios": list(ratios),
        "baseline": {"peak_gib": base_peak, "tflops": base_flops},
        "series": series,
    }


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap font
        return ImageFont.load_default()


def _axis_top(value: float) -> float:
    """A round number at or above `value` (1, 2, 2.5, 5 × 10^k)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, ratios: list[float],
           lines: dict[str, list[float]], reference: float, font, small) -> None:
    left, top, right, bottom = box
    top_value = _axis_top(max([reference, *[v for values in lines.values() for v in values]]) * 1.05)
    x_max = max(ratios) or 1.0

    def x(ratio: float) -> float:
        return left + (right - left) * ratio / x_max

    def y(value: float) -> float:
        return bottom - (bottom - top) * value / top_value

    draw.text((left, top - 28), title, fill=(20, 20, 20), font=font)
    for tick in range(6):
        value = top_value * tick / 5
        draw.line([(left, y(value)), (right, y(value))], fill=(225, 225, 225))
        draw.text((left - 8, y(value)), f"{value:g}", fill=(60, 60, 60), font=small, anchor="rm")
    for ratio in ratios:
        draw.text((x(ratio), bottom + 8), f"{round(ratio * 100)}%", fill=(60, 60, 60), font=small, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(60, 60, 60), width=2)
    draw.text(((left + right) / 2, bottom + 28), "skip ratio", fill=(60, 60, 60), font=small, anchor="mt")
    baseline_y = y(reference)
    for start in range(int(left), int(right), 14):
        draw.line([(start, baseline_y), (min(start + 8, right), baseline_y)], fill=_COLOURS["baseline"], width=2)
    for name, values in lines.items():
        points = [(x(ratio), y(value)) for ratio, value in zip(ratios, values)]
        colour = _COLOURS.get(name, (0, 0, 0))
        draw.line(points, fill=colour, width=_WIDTHS.get(name, 3))
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)


def draw_skip_sweep(sweep: dict[str, Any]) -> Image.Image:
    """Two panels — peak memory (GiB) and TFLOPs per step — against skip ratio."""
    width, height = 1100, 460
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(18), _font(14)
    ratios = sweep["ratios"]
    series = sweep["series"]
    resolution = sweep.get("resolution")
    title = f"{sweep['model']}: LoRA training step" + (f" at {resolution}px" if resolution else "")
    draw.text((20, 12), title, fill=(0, 0, 0), font=font)
    panels = (("peak memory, GiB", "peak_gib", (80, 90, 520, 380)), ("TFLOPs per step", "tflops", (620, 90, 1060, 380)))
    for heading, key, box in panels:
        _panel(draw, box, heading, ratios, {name: values[key] for name, values in series.items()},
               sweep["baseline"][key], font, small)
    legend_x = 80
    base_label = "baseline (LoRA" + (f" at {sweep['baseline_resolution']}px)" if sweep.get("baseline_resolution") else ")")
    for name in ["baseline", *series]:
        colour = _COLOURS.get(name, (0, 0, 0))
        draw.line([(legend_x, height - 24), (legend_x + 28, height - 24)], fill=colour, width=3)
        label = base_label if name == "baseline" else name
        draw.text((legend_x + 36, height - 24), label, fill=(30, 30, 30), font=small, anchor="lm")
        legend_x += 60 + int(draw.textlength(label, font=small))
    return image
