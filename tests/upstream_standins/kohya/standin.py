"""Test fixtures for the kohya stand-in: a tiny BFL checkpoint, an image folder, the command line.

`tests/test_kohya_*.py` import this after putting this folder on `sys.path` (as running
`flux_train_network.py` from a checkout would), so `library`, `networks` and `train_network`
are the stand-in's.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

STANDIN = Path(__file__).parent
SCRIPT = STANDIN / "flux_train_network.py"
if str(STANDIN) not in sys.path:
    sys.path.insert(0, str(STANDIN))

from library import flux_models, flux_utils  # noqa: E402


def tiny_flux(depth=2, single=4, seed=0):
    torch.manual_seed(seed)
    params = flux_models.FluxParams(**{**flux_models.configs["dev"].__dict__, "depth": depth, "depth_single_blocks": single})
    model = flux_models.Flux(params)
    with torch.no_grad():  # non-zero modulation gates, so every block changes its streams
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def write_checkpoint(path, depth=2, single=4, seed=0):
    save_file({k: v.contiguous() for k, v in tiny_flux(depth, single, seed).state_dict().items()}, str(path))
    return Path(path)


def write_images(folder, count=2, size=64, seed=0):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"sks dog {index}.png")
    return folder


def kohya_args(tmp, checkpoint, images, *extra, steps=3, resolution=64, batch=2):
    return [
        "--pretrained_model_name_or_path", str(checkpoint), "--train_data_dir", str(images),
        "--output_dir", str(Path(tmp) / "out"), "--output_name", "lora", "--resolution", str(resolution),
        "--network_module", "networks.lora_flux", "--network_dim", "4", "--network_alpha", "4",
        "--max_train_steps", str(steps), "--train_batch_size", str(batch), "--learning_rate", "1e-3",
        "--seed", "0", "--timestep_sampling", "shift", "--model_prediction_type", "raw", *extra,
    ]


def model_inputs(batch=2, image_tokens=9, text_tokens=5, seed=1):
    """Forward kwargs for `tiny_flux()` with unequal image and text lengths."""
    params = flux_models.configs["dev"]
    generator = torch.Generator().manual_seed(seed)
    side = int(image_tokens**0.5)
    return dict(
        img=torch.randn(batch, image_tokens, params.in_channels, generator=generator),
        img_ids=flux_utils.prepare_img_ids(batch, side, side),
        txt=torch.randn(batch, text_tokens, params.context_in_dim, generator=generator),
        txt_ids=torch.zeros(batch, text_tokens, 3),
        timesteps=torch.tensor([0.3, 0.8][:batch]),
        y=torch.randn(batch, params.vec_in_dim, generator=generator),
        guidance=torch.full((batch,), 3.5),
    )
