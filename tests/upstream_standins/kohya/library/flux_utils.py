"""Loading and packing helpers with the names of sd-scripts' library/flux_utils.py at 48d368f (stand-in)."""

import torch
from safetensors.torch import load_file
from torch import nn

from . import flux_models

MODEL_VERSION_FLUX_V1 = "flux1"


def load_flow_model(ckpt_path, dtype, device, disable_mmap=False, model_type="flux"):
    """Block counts from the checkpoint's keys, the other sizes from `flux_models.configs["dev"]`."""
    state = load_file(ckpt_path)
    params = flux_models.configs["dev"]
    depth = len({key.split(".")[1] for key in state if key.startswith("double_blocks.")})
    single = len({key.split(".")[1] for key in state if key.startswith("single_blocks.")})
    params = flux_models.FluxParams(**{**params.__dict__, "depth": depth, "depth_single_blocks": single})
    model = flux_models.Flux(params)
    model.load_state_dict(state)
    return False, model.to(device=device, dtype=dtype)


def load_ae(ckpt_path, dtype, device, disable_mmap=False):
    torch.manual_seed(1)
    return flux_models.AutoEncoder().to(device=device, dtype=dtype)


class TinyTextEncoder(nn.Module):
    """A seeded embedding table standing in for CLIP-L (pooled output) or T5-XXL (sequence)."""

    def __init__(self, width, seed):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embedding = nn.Embedding(256, width)
        self.embedding.weight.data = torch.randn(256, width, generator=generator)

    @property
    def dtype(self):
        return self.embedding.weight.dtype

    def forward(self, ids):
        return self.embedding(ids)


def load_clip_l(ckpt_path, dtype, device, disable_mmap=False):
    return TinyTextEncoder(flux_models.configs["dev"].vec_in_dim, seed=2).to(device=device, dtype=dtype)


def load_t5xxl(ckpt_path, dtype, device, disable_mmap=False):
    return TinyTextEncoder(flux_models.configs["dev"].context_in_dim, seed=3).to(device=device, dtype=dtype)


def pack_latents(x):
    batch, channels, height, width = x.shape
    x = x.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(x, packed_height, packed_width):
    batch, _, features = x.shape
    x = x.view(batch, packed_height, packed_width, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, features // 4, packed_height * 2, packed_width * 2)


def prepare_img_ids(batch_size, packed_height, packed_width):
    ids = torch.zeros(packed_height, packed_width, 3)
    ids[..., 1] = torch.arange(packed_height)[:, None]
    ids[..., 2] = torch.arange(packed_width)[None, :]
    return ids.reshape(1, -1, 3).repeat(batch_size, 1, 1)
