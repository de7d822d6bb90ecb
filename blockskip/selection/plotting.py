"""Draw a selection profile as a PNG with Pillow (no plotting library needed).

Two panels share the depth axis (block index, 0 at the input):

- **masking curve** (top): the mean distance when a window of consecutive blocks is masked,
  drawn at the window's centre. High means the subject lives there.
- **first n / last m** (bottom): the mean distance with the first n blocks masked, drawn at
  x = n, and with the last m blocks masked, drawn at x = N − m; so each curve grows from its
  own end of the stack toward the middle.

Grey bands mark the model's block lists (FLUX: double, then single blocks); red bands mark the
chosen leading and trailing skips when a split is given.

Example:
    >>> from blockskip.selection.profile import SelectionProfile
    >>> profile = SelectionProfile(model_class="MyDiT", num_blocks=4, samples=["a"],
    ...     leading=[[0.1], [0.3], [0.6]], trailing=[[0.2], [0.5], [0.7]],
    ...     window_size=2, window_starts=[0, 1, 2], window_distances=[[0.2], [0.6], [0.4]])
    >>> image = draw_profile(profile, split=(1, 1))
    >>> image.size
    (960, 640)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .profile import SelectionProfile

WIDTH, HEIGHT = 960, 640
_MARGIN_LEFT, _MARGIN_RIGHT = 72, 24
_WINDOW_COLOUR = (31, 90, 170)
_LEADING_COLOUR = (31, 119, 180)
_TRAILING_COLOUR = (230, 120, 20)
_SKIP_COLOUR = (250, 215, 215)
_BAND_COLOURS = ((246, 246, 246), (232, 232, 232))
_AXIS_COLOUR = (60, 60, 60)
_GRID_COLOUR = (215, 215, 215)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _nice_ceiling(value: float) -> float:
    """The smallest 1/2/2.5/5 × 10^k at or above `value` (for axis ranges)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * 10**exponent >= value * (1 - 1e-12):
            return step * 10**exponent
    return 10 ** (exponent + 1)


class _Panel:
    """One plot area: maps data coordinates (block index, distance) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], num_blocks: int, y_max: float):
        self.draw, self.box, self.num_blocks, self.y_max = draw, box, num_blocks, y_max

    def x(self, value: float) -> float:
        left, _, right, _ = self.box
        return left + (right - left) * value / self.num_blocks

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (bottom - top) * value / self.y_max

    def band(self, start: float, stop: float, colour: tuple[int, int, int]) -> None:
        _, top, _, bottom = self.box
        self.draw.rectangle((self.x(start), top, self.x(stop), bottom), fill=colour)

    def axes(self, title: str, small: ImageFont.ImageFont, font: ImageFont.ImageFont) -> None:
        left, top, right, bottom = self.box
        draw = self.draw
        for tick in range(5):
            value = self.y_max * tick / 4
            draw.line((left, self.y(value), right, self.y(value)), fill=_GRID_COLOUR)
            draw.text((left - 6, self.y(value)), f"{value:.3g}", fill=_AXIS_COLOUR, font=small, anchor="rm")
        step = max(1, _nice_ceiling(self.num_blocks / 12))
        tick = 0
        while tick <= self.num_blocks:
            draw.line((self.x(tick), bottom, self.x(tick), bottom + 4), fill=_AXIS_COLOUR)
            draw.text((self.x(tick), bottom + 6), f"{tick:g}", fill=_AXIS_COLOUR, font=small, anchor="mt")
            tick += step
        draw.rectangle(self.box, outline=_AXIS_COLOUR)
        draw.text((left, top - 6), title, fill=(0, 0, 0), font=font, anchor="lb")

    def curve(self, points: Sequence[tuple[float, float]], colour: tuple[int, int, int]) -> None:
        pixels = [(self.x(x), self.y(y)) for x, y in points]
        if len(pixels) > 1:
            self.draw.line(pixels, fill=colour, width=2, joint="curve")
        radius = 3 if len(pixels) < 80 else 2
        for px, py in pixels:
            self.draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=colour)


def _mean(row: Sequence[float]) -> float:
    return math.fsum(row) / len(row)


def draw_profile(profile: SelectionProfile, split: tuple[int, int] | None = None) -> Image.Image:
    """The profile's masking curve and first-n / last-m curves as a Pillow image."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    total = profile.num_blocks
    window = profile.window_curve()
    leading = [(n, _mean(row)) for n, row in enumerate(profile.leading, start=1)]
    trailing = [(total - m, _mean(row)) for m, row in enumerate(profile.trailing, start=1)]

    header = (
        f"Cross-attention masking: {profile.model_class}, {total} blocks, "
        f"{profile.metric}, {len(profile.samples)} generations"
    )
    draw.text((_MARGIN_LEFT, 12), header, fill=(0, 0, 0), font=font)
    right = WIDTH - _MARGIN_RIGHT
    top_box = (_MARGIN_LEFT, 64, right, 300)
    bottom_box = (_MARGIN_LEFT, 370, right, HEIGHT - 70)
    ends_max = max([y for _, y in leading + trailing], default=0.0)
    panels = [
        (_Panel(draw, top_box, total, _nice_ceiling(max(window, default=0.0) * 1.05)), "window"),
        (_Panel(draw, bottom_box, total, _nice_ceiling(ends_max * 1.05)), "ends"),
    ]
    lists = profile.block_lists or [("blocks", total)]
    for panel, kind in panels:
        offsets = [sum(length for _, length in lists[:index]) for index in range(len(lists))]
        for index, ((name, length), offset) in enumerate(zip(lists, offsets)):
            panel.band(offset, offset + length, _BAND_COLOURS[index % 2])
        if split is not None:
            n, m = split
            if n:
                panel.band(0, n, _SKIP_COLOUR)
            if m:
                panel.band(total - m, total, _SKIP_COLOUR)
        if len(lists) > 1:
            for (name, _), offset in zip(lists, offsets):
                draw.text((panel.x(offset) + 4, panel.box[1] + 4), name, fill=(110, 110, 110), font=small)
        if kind == "window":
            title = (
                f"masking curve: mean distance with blocks [s, s + {profile.window_size}) masked, at the window centre"
                if window
                else "masking curve: not measured (window = 0)"
            )
            panel.axes(title, small, font)
            centres = [start + profile.window_size / 2 for start in profile.window_starts]
            panel.curve(list(zip(centres, window)), _WINDOW_COLOUR)
        else:
            panel.axes("mean distance with the first n (at x = n) / last m (at x = N - m) blocks masked", small, font)
            panel.curve([(0, 0.0)] + leading, _LEADING_COLOUR)
            panel.curve([(total, 0.0)] + trailing, _TRAILING_COLOUR)
        centre = (panel.box[0] + panel.box[2]) / 2
        draw.text((centre, panel.box[3] + 22), "block index (depth)", fill=_AXIS_COLOUR, font=small, anchor="mt")

    legend_y = HEIGHT - 26
    items = [(_LEADING_COLOUR, "first n masked"), (_TRAILING_COLOUR, "last m masked")]
    if split is not None:
        items.append((_SKIP_COLOUR, f"chosen skip: {split[0]} leading + {split[1]} trailing"))
    x = _MARGIN_LEFT
    for colour, label in items:
        draw.rectangle((x, legend_y - 6, x + 18, legend_y + 6), fill=colour, outline=_AXIS_COLOUR)
        draw.text((x + 24, legend_y), label, fill=(0, 0, 0), font=small, anchor="lm")
        x += 36 + int(draw.textlength(label, font=small))
    return image


def save_profile_plot(profile: SelectionProfile, path: str | os.PathLike, split: tuple[int, int] | None = None) -> Path:
    """Draw the profile (see `draw_profile`) and save it as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_profile(profile, split).save(path, format="PNG")
    return path
