"""Folders of small generated training images with captions, for the precompute and input tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = ("a photo of sks dog", "a sks dog on the beach")


def write_images(folder: Path, sizes, captions: str = "metadata", seed: int = 0) -> Path:
    """PNGs of random pixels of the given `(height, width)` sizes, captioned (alternating `CAPTIONS`)
    through `metadata.jsonl` (`captions="metadata"`) or a `.txt` beside each image (`"txt"`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for index, (height, width) in enumerate(sizes):
        name, caption = f"img{index}.png", CAPTIONS[index % 2]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
        if captions == "metadata":
            lines.append(json.dumps({"file_name": name, "text": caption}))
        else:
            (folder / name).with_suffix(".txt").write_text(caption + "\n")
    if lines:
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
