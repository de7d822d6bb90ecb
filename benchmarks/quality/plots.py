"""The personalization benchmark's two charts, drawn with Pillow: the four scores of every row as
bars with ± std whiskers, and measured training memory against subject similarity.

    >>> rows = {"full LoRA @32": {"scores": {"subject_similarity": (0.9, 0.02), "image_similarity": (0.6, 0.03),
    ...                                      "prompt_adherence": (0.8, 0.05), "subject_accuracy": (0.3, 0.2)},
    ...                           "memory": 1.0}}
    >>> score_bars(rows).size, memory_quality_scatter(rows).size
    ((1000, 382), (1000, 462))
"""

from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

SCORES = {
    "subject_similarity": "subject sim. (DINO-like)",
    "image_similarity": "image sim. (CLIP-I-like)",
    "prompt_adherence": "prompt adherence (CLIP-T-like)",
    "subject_accuracy": "subject accuracy",
}
LEGEND_LINE = 16


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _colour(index: int, count: int) -> tuple[int, int, int]:
    """Evenly spaced hues, alternating in lightness so neighbours differ."""
    hue = (index * 0.618034) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.85 if index % 2 else 0.6)
    return int(255 * red), int(255 * green), int(255 * blue)


def _legend(draw, rows, x: int, y: int, font, numbered: bool) -> None:
    for index, name in enumerate(rows):
        column, line = index % 2, index // 2
        left, top = x + column * 460, y + line * LEGEND_LINE
        draw.rectangle([left, top + 2, left + 10, top + 12], fill=_colour(index, len(rows)))
        draw.text((left + 16, top), f"{index + 1}. {name}" if numbered else name, fill="black", font=font)


def score_bars(rows: dict[str, dict]) -> Image.Image:
    """One group of bars per score (0–1), one bar per row in table order, whiskers at ± std."""
    width, left, top, bottom = 1000, 60, 40, 330
    height = bottom + 36 + LEGEND_LINE * ((len(rows) + 1) // 2)
    image = Image.new("RGB", (width, height), "white")
    draw, font, small = ImageDraw.Draw(image), _font(14), _font(11)
    draw.text((left, 10), "Scores per row (mean ± std over subjects and seeds)", fill="black", font=font)
    plot_right = width - 20
    for tick in range(0, 11, 2):
        y = bottom - (bottom - top) * tick / 10
        draw.line([(left, y), (plot_right, y)], fill=(225, 225, 225))
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black", font=small)
    group = (plot_right - left) / len(SCORES)
    bar = group * 0.8 / max(len(rows), 1)
    for g, (key, label) in enumerate(SCORES.items()):
        start = left + g * group + group * 0.1
        for index, (name, row) in enumerate(rows.items()):
            mean, spread = row["scores"][key]
            x0 = start + index * bar
            y = bottom - (bottom - top) * max(0.0, min(1.0, mean))
            draw.rectangle([x0, y, x0 + bar * 0.9, bottom], fill=_colour(index, len(rows)))
            centre = x0 + bar * 0.45
            low, high = (bottom - (bottom - top) * max(0.0, min(1.0, mean + sign * spread)) for sign in (-1, 1))
            draw.line([(centre, low), (centre, high)], fill="black", width=1)
        draw.text((start, bottom + 6), label, fill="black", font=small)
    _legend(draw, rows, left, bottom + 30, small, numbered=False)
    return image


def memory_quality_scatter(rows: dict[str, dict]) -> Image.Image:
    """Training memory (ratio to full LoRA, measured) against subject similarity, one point per row."""
    points = {name: (row["memory"], row["scores"]["subject_similarity"][0]) for name, row in rows.items() if row.get("memory") is not None}
    width, left, top, right, bottom = 1000, 70, 40, 980, 400
    height = bottom + 46 + LEGEND_LINE * ((len(points) + 1) // 2)
    image = Image.new("RGB", (width, height), "white")
    draw, font, small = ImageDraw.Draw(image), _font(14), _font(11)
    draw.text((left, 10), "Training memory (ratio to full LoRA, measured) vs subject similarity", fill="black", font=font)
    if not points:
        return image
    similarities = [s for _, s in points.values()]
    low, high = min(similarities) - 0.02, max(similarities) + 0.02
    top_memory = max(1.1, max(m for m, _ in points.values()) * 1.05)
    for tick in range(0, 11, 2):
        x = left + (right - left) * tick / 10
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.text((x - 8, bottom + 4), f"{top_memory * tick / 10:.2f}", fill="black", font=small)
    for tick in range(0, 5):
        value = low + (high - low) * tick / 4
        y = bottom - (bottom - top) * tick / 4
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((left - 44, y - 6), f"{value:.3f}", fill="black", font=small)
    draw.text((right - 170, bottom + 20), "memory / full LoRA", fill="black", font=small)
    for index, (memory, similarity) in enumerate(points.values()):
        x = left + (right - left) * memory / top_memory
        y = bottom - (bottom - top) * (similarity - low) / (high - low)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=_colour(index, len(points)))
        draw.text((x + 7, y - 7), str(index + 1), fill="black", font=small)
    _legend(draw, points, left, bottom + 40, small, numbered=True)
    return image
