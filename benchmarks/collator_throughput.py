"""Collation throughput of DynamicPatchCollator against a plain resize collator, same images, same run.

    python benchmarks/collator_throughput.py                      # PIL sources, FLUX sizes
    python benchmarks/collator_throughput.py --source tensor --size 768x1024

Both collators get the same in-memory images (PIL images or uint8 tensors, as a dataset would
yield them) and produce ``(B, 3, s_min, s_min)`` float batches in [-1, 1]. The baseline takes the
centred square and resizes it (bilinear, antialiased), which is what a DreamBooth dataset does once
per image. Prints images/s for each and the ratio. Single process, no DataLoader workers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from blockskip.crops.collator import DynamicPatchCollator


def make_images(n: int, height: int, width: int, source: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        # smooth-ish content so PIL and resampling do representative work
        base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((width, height), Image.BILINEAR)
        images.append(im if source == "pil" else torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous())
    return images


def plain_resize_collate(examples, size: int):
    out = []
    for ex in examples:
        x = torch.from_numpy(np.array(ex.convert("RGB"))).permute(2, 0, 1) if isinstance(ex, Image.Image) else ex
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        x = x.float() / 127.5 - 1.0
        out.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return {"pixel_values": torch.stack(out)}


def throughput(collators: dict, images, batch_size: int, repeats: int) -> dict[str, float]:
    """Median images/s per collator; passes are interleaved so machine noise hits all alike."""
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    rates = {name: [] for name in collators}
    for name, collate in collators.items():
        collate(batches[0])  # warm-up
    for _ in range(repeats):
        for name, collate in collators.items():
            start = time.perf_counter()
            for batch in batches:
                collate(batch)
            rates[name].append(len(images) / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--size", default="768x1024", help="HxW of the source images")
    parser.add_argument("--source", choices=("pil", "tensor"), default="pil")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--multiple-of", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a loader worker uses 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    images = make_images(args.num_images, height, width, args.source)

    dynamic = DynamicPatchCollator(min_size=args.min_size, max_size=args.max_size, multiple_of=args.multiple_of, seed=0)
    resize_schedule = DynamicPatchCollator(
        min_size=args.min_size, max_size=args.max_size, multiple_of=args.multiple_of, schedule="resize", seed=0
    )
    rates = throughput(
        {"plain": lambda b: plain_resize_collate(b, args.min_size), "ours": dynamic, "ours_resize": resize_schedule},
        images, args.batch_size, args.repeats,
    )
    plain, ours, ours_resize = rates["plain"], rates["ours"], rates["ours_resize"]
    print(f"{args.num_images} {args.source} images {height}x{width} -> {args.min_size}^2, "
          f"crops {args.min_size}..{args.max_size}, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"plain resize collator          : {plain:8.1f} images/s")
    print(f"DynamicPatchCollator low_to_high: {ours:8.1f} images/s  ratio {ours / plain:.2f}x")
    print(f"DynamicPatchCollator resize     : {ours_resize:8.1f} images/s  ratio {ours_resize / plain:.2f}x")


if __name__ == "__main__":
    main()
