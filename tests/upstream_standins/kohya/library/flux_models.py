"""A tiny BFL-layout FLUX.1 (`Flux`, `DoubleStreamBlock`, `SingleStreamBlock`), the interface of
sd-scripts' library/flux_models.py at 48d368f, written for blockskip's tests."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class FluxParams:
    in_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: list
    theta: int
    qkv_bias: bool
    guidance_embed: bool


configs = {
    "dev": FluxParams(64, 8, 12, 32, 2.0, 2, 2, 4, [4, 6, 6], 10000, True, True),
}


def _rope(positions: Tensor, dim: int, theta: int) -> Tensor:
    frequencies = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.double()[..., None] * frequencies
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2).float()


def _apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    rotated = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return rotated.reshape(*x.shape).type_as(x)


def attention(q, k, v, pe, attn_mask=None):
    q, k = _apply_rope(q, pe), _apply_rope(k, pe)
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).flatten(2)


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.theta, self.axes_dim = theta, axes_dim

    def forward(self, ids):
        parts = [_rope(ids[..., axis], self.axes_dim[axis], self.theta) for axis in range(ids.shape[-1])]
        return torch.cat(parts, dim=-3).unsqueeze(1)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(t.dtype if t.is_floating_point() else torch.float32)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, hidden_dim)
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self):
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self):
        self.gradient_checkpointing = False

    def forward(self, x):
        return self.out_layer(nn.functional.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.norm, self.proj = nn.Linear(dim, dim * 3, bias=qkv_bias), QKNorm(dim // num_heads), nn.Linear(dim, dim)


def _heads(qkv, num_heads):
    batch, length, _ = qkv.shape
    return qkv.view(batch, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mask(txt_attention_mask, total, heads, length):
    if txt_attention_mask is None:
        return None
    mask = txt_attention_mask.bool()
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], total - mask.shape[1])], dim=1)
    return mask[:, None, None, :].expand(-1, heads, length, -1)


class _Checkpointable(nn.Module):
    def enable_gradient_checkpointing(self, cpu_offload=False):
        self.gradient_checkpointing, self.cpu_offload_checkpointing = True, cpu_offload

    def disable_gradient_checkpointing(self):
        self.gradient_checkpointing = self.cpu_offload_checkpointing = False


class DoubleStreamBlock(_Checkpointable):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"),
                                                         nn.Linear(hidden, hidden_size)))
        self.gradient_checkpointing = self.cpu_offload_checkpointing = False

    def _qkv(self, stream, x, shift, scale):
        attn = getattr(self, f"{stream}_attn")
        q, k, v = _heads(attn.qkv((1 + scale) * getattr(self, f"{stream}_norm1")(x) + shift), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def _forward(self, img, txt, vec, pe, txt_attention_mask=None):
        im = self.img_mod(vec)
        tm = self.txt_mod(vec)
        iq, ik, iv = self._qkv("img", img, im[0], im[1])
        tq, tk, tv = self._qkv("txt", txt, tm[0], tm[1])
        q, k, v = torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2)
        out = attention(q, k, v, pe, _mask(txt_attention_mask, q.shape[2], q.shape[1], q.shape[2]))
        txt_out, img_out = out[:, : txt.shape[1]], out[:, txt.shape[1] :]
        img = img + im[2] * self.img_attn.proj(img_out)
        img = img + im[5] * self.img_mlp((1 + im[4]) * self.img_norm2(img) + im[3])
        txt = txt + tm[2] * self.txt_attn.proj(txt_out)
        txt = txt + tm[5] * self.txt_mlp((1 + tm[4]) * self.txt_norm2(txt) + tm[3])
        return img, txt

    def forward(self, img, txt, vec, pe, txt_attention_mask=None):
        if self.training and self.gradient_checkpointing:
            return checkpoint(self._forward, img, txt, vec, pe, txt_attention_mask, use_reentrant=False)
        return self._forward(img, txt, vec, pe, txt_attention_mask)


class SingleStreamBlock(_Checkpointable):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_scale=None):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)
        self.gradient_checkpointing = self.cpu_offload_checkpointing = False

    def _forward(self, x, vec, pe, txt_attention_mask=None):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1((1 + scale) * self.pre_norm(x) + shift).split([3 * self.hidden_size, self.mlp_hidden_dim], -1)
        q, k, v = _heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = attention(q, k, v, pe, _mask(txt_attention_mask, x.shape[1], self.num_heads, x.shape[1]))
        return x + gate * self.linear2(torch.cat((out, self.mlp_act(mlp)), 2))

    def forward(self, x, vec, pe, txt_attention_mask=None):
        if self.training and self.gradient_checkpointing:
            return checkpoint(self._forward, x, vec, pe, txt_attention_mask, use_reentrant=False)
        return self._forward(x, vec, pe, txt_attention_mask)


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None]) * self.norm_final(x) + shift[:, None])


class Flux(nn.Module):
    def __init__(self, params: FluxParams):
        super().__init__()
        self.params = params
        self.in_channels = self.out_channels = params.in_channels
        self.hidden_size, self.num_heads = params.hidden_size, params.num_heads
        self.pe_embedder = EmbedND(params.hidden_size // params.num_heads, params.theta, params.axes_dim)
        self.img_in = nn.Linear(params.in_channels, params.hidden_size)
        self.time_in = MLPEmbedder(256, params.hidden_size)
        self.vector_in = MLPEmbedder(params.vec_in_dim, params.hidden_size)
        self.guidance_in = MLPEmbedder(256, params.hidden_size) if params.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(params.context_in_dim, params.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(params.hidden_size, params.num_heads, params.mlp_ratio, params.qkv_bias) for _ in range(params.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(params.hidden_size, params.num_heads, params.mlp_ratio) for _ in range(params.depth_single_blocks)
        )
        self.final_layer = LastLayer(params.hidden_size, 1, self.out_channels)
        self.gradient_checkpointing = self.cpu_offload_checkpointing = False
        self.blocks_to_swap = None

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def enable_gradient_checkpointing(self, cpu_offload=False):
        self.gradient_checkpointing, self.cpu_offload_checkpointing = True, cpu_offload
        for block in self.double_blocks + self.single_blocks:
            block.enable_gradient_checkpointing(cpu_offload=cpu_offload)

    def disable_gradient_checkpointing(self):
        self.gradient_checkpointing = self.cpu_offload_checkpointing = False
        for block in self.double_blocks + self.single_blocks:
            block.disable_gradient_checkpointing()

    def enable_block_swap(self, num_blocks, device):
        classes = {type(block).__name__ for block in self.double_blocks} | {type(b).__name__ for b in self.single_blocks}
        assert len(classes) == 2, f"swapped blocks must share their classes, found {sorted(classes)}"
        self.blocks_to_swap = num_blocks

    def prepare_block_swap_before_forward(self):
        return None

    def get_mod_vectors(self, timesteps, guidance=None, batch_size=None):
        return None

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y, block_controlnet_hidden_states=None,
                block_controlnet_single_hidden_states=None, guidance=None, txt_attention_mask=None, mod_vectors=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        if self.params.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, txt_attention_mask=txt_attention_mask)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe, txt_attention_mask=txt_attention_mask)
        return self.final_layer(img[:, txt.shape[1] :, ...], vec)


class AutoEncoder(nn.Module):
    """16 latent channels at 1/8 of the image side, like FLUX's VAE (scaled and shifted inside)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.decoder = nn.ConvTranspose2d(16, 3, kernel_size=8, stride=8)
        self.scale_factor, self.shift_factor = 0.3611, 0.1159

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def encode(self, x):
        return self.scale_factor * (self.encoder(x) - self.shift_factor)

    def decode(self, z):
        return self.decoder(z / self.scale_factor + self.shift_factor)
