"""Released transformer configs of the models blockskip estimates, typed in from public sources.

A preset is the `transformer/config.json` of a released checkpoint (architecture fields only)
plus the training defaults an estimate needs: the baseline LoRA resolution, the BlockSkip
training resolution (the paper halves it: FLUX 512 → 256, Sana 1024 → 512), the text length the
training scripts use, and a frame count for video models. `source` says where the numbers come
from; nothing here is downloaded.

Example:
    >>> preset = get_preset("FLUX.1-dev")
    >>> preset.config["num_layers"], preset.config["num_single_layers"], preset.resolution
    (19, 38, 512)
    >>> get_preset("flux-dev")
    Traceback (most recent call last):
    ...
    blockskip.families.presets.UnknownModelError: unknown model 'flux-dev': not a preset, and no config.json at that path. Presets: flux.1-dev, flux.1-schnell, sd3.5-large, sd3.5-medium, sana-1600m, sana-600m, qwen-image, wan2.1-1.3b, wan2.1-14b, hunyuanvideo, ltx-video, chroma, flux.2-dev, flux.2-klein-4b, flux.2-klein-9b, lumina-image-2.0, cogvideox-2b, cogvideox-5b
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


class UnknownModelError(LookupError):
    """Neither a preset name nor a readable config; the message lists the presets."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    config: dict[str, Any]
    source: str
    resolution: int  # baseline LoRA training side, pixels
    training_resolution: int  # BlockSkip training side (crops are resized to it)
    text_length: int
    frames: int | None = None  # video models only
    aliases: tuple[str, ...] = field(default=())

    @property
    def class_name(self) -> str:
        return self.config["_class_name"]


_FLUX_SOURCE = (
    "black-forest-labs/{repo} transformer/config.json as released (also diffusers' "
    "scripts/convert_flux_to_diffusers.py and FluxTransformer2DModel defaults); text: T5 max_sequence_length 512"
)
_FLUX = {
    "_class_name": "FluxTransformer2DModel",
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
}
_SD35_SOURCE = (
    "stabilityai/{repo} transformer/config.json as released (cross-checked against configs re-typed in "
    "public loaders); text: 77 CLIP + 256 T5 tokens as in the SD3 DreamBooth script"
)
_SD35 = {
    "_class_name": "SD3Transformer2DModel",
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "attention_head_dim": 64,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 2048,
    "qk_norm": "rms_norm",
}
_SANA_SOURCE = (
    "Efficient-Large-Model/{repo}: diffusers' scripts/convert_sana_to_diffusers.py model_kwargs['{key}'] "
    "with caption_channels 2304, mlp_ratio 2.5, in/out 32, patch 1; text: 300 Gemma tokens (SanaPipeline)"
)
_SANA = {
    "_class_name": "SanaTransformer2DModel",
    "in_channels": 32,
    "out_channels": 32,
    "attention_head_dim": 32,
    "caption_channels": 2304,
    "mlp_ratio": 2.5,
    "attention_bias": False,
    "sample_size": 32,
    "patch_size": 1,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
}
_WAN_SOURCE = (
    "Wan-AI/{repo}: diffusers' scripts/convert_wan_to_diffusers.py get_transformer_config('{key}'); "
    "text: 512 UMT5 tokens (WanPipeline)"
)
_WAN = {
    "_class_name": "WanTransformer3DModel",
    "patch_size": [1, 2, 2],
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "added_kv_proj_dim": None,
}

_FLUX2_SOURCE = (
    "black-forest-labs/{repo}: diffusers' scripts/convert_flux2_to_diffusers.py "
    "get_flux2_transformer_config('{key}'); text: 512 tokens (Flux2Pipeline / Flux2KleinPipeline max_sequence_length)"
)
_FLUX2 = {
    "_class_name": "Flux2Transformer2DModel", "patch_size": 1, "in_channels": 128, "attention_head_dim": 128,
    "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000,
    "eps": 1e-6,
}
_COGVIDEOX_SOURCE = (
    "THUDM/{repo}: diffusers' scripts/convert_cogvideox_to_diffusers.py (CogVideoXTransformer3DModel defaults with "
    "num_layers, num_attention_heads and RoPE as its comments give for {size}); text: 226 T5 tokens; 49 frames (sample_frames)"
)

PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            "flux.1-dev",
            {**_FLUX, "guidance_embeds": True},
            _FLUX_SOURCE.format(repo="FLUX.1-dev"),
            512,
            256,
            512,
            aliases=("black-forest-labs/FLUX.1-dev", "flux1-dev"),
        ),
        ModelPreset(
            "flux.1-schnell",
            {**_FLUX, "guidance_embeds": False},
            _FLUX_SOURCE.format(repo="FLUX.1-schnell"),
            512,
            256,
            256,
            aliases=("black-forest-labs/FLUX.1-schnell", "flux1-schnell"),
        ),
        ModelPreset(
            "sd3.5-large",
            {**_SD35, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
             "pos_embed_max_size": 192, "dual_attention_layers": []},
            _SD35_SOURCE.format(repo="stable-diffusion-3.5-large"),
            512,
            256,
            333,
            aliases=("stabilityai/stable-diffusion-3.5-large",),
        ),
        ModelPreset(
            "sd3.5-medium",
            {**_SD35, "num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
             "pos_embed_max_size": 384, "dual_attention_layers": list(range(13))},
            _SD35_SOURCE.format(repo="stable-diffusion-3.5-medium"),
            512,
            256,
            333,
            aliases=("stabilityai/stable-diffusion-3.5-medium",),
        ),
        ModelPreset(
            "sana-1600m",
            {**_SANA, "num_layers": 20, "num_attention_heads": 70, "num_cross_attention_heads": 20,
             "cross_attention_head_dim": 112, "cross_attention_dim": 2240},
            _SANA_SOURCE.format(repo="Sana_1600M_1024px_diffusers", key="SanaMS_1600M_P1_D20"),
            1024,
            512,
            300,
            aliases=("Efficient-Large-Model/Sana_1600M_1024px_diffusers", "sana-1.6b"),
        ),
        ModelPreset(
            "sana-600m",
            {**_SANA, "num_layers": 28, "num_attention_heads": 36, "num_cross_attention_heads": 16,
             "cross_attention_head_dim": 72, "cross_attention_dim": 1152},
            _SANA_SOURCE.format(repo="Sana_600M_1024px_diffusers", key="SanaMS_600M_P1_D28"),
            1024,
            512,
            300,
            aliases=("Efficient-Large-Model/Sana_600M_1024px_diffusers",),
        ),
        ModelPreset(
            "qwen-image",
            {"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64, "out_channels": 16,
             "num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
             "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]},
            "Qwen/Qwen-Image transformer/config.json as released (= QwenImageTransformer2DModel defaults in "
            "diffusers 0.42); text: 512 Qwen2.5-VL tokens (a typical prompt is shorter)",
            1024,
            512,
            512,
            aliases=("Qwen/Qwen-Image", "qwenimage"),
        ),
        ModelPreset(
            "wan2.1-1.3b",
            {**_WAN, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
            _WAN_SOURCE.format(repo="Wan2.1-T2V-1.3B-Diffusers", key="Wan-T2V-1.3B"),
            512,
            256,
            512,
            frames=33,
            aliases=("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan-1.3b"),
        ),
        ModelPreset(
            "wan2.1-14b",
            {**_WAN, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},
            _WAN_SOURCE.format(repo="Wan2.1-T2V-14B-Diffusers", key="Wan-T2V-14B"),
            512,
            256,
            512,
            frames=33,
            aliases=("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan-14b"),
        ),
        ModelPreset(
            "hunyuanvideo",
            {"_class_name": "HunyuanVideoTransformer3DModel", "in_channels": 16, "out_channels": 16,
             "num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 20, "num_single_layers": 40,
             "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm",
             "guidance_embeds": True, "text_embed_dim": 4096, "pooled_projection_dim": 768, "rope_theta": 256.0,
             "rope_axes_dim": [16, 56, 56]},
            "hunyuanvideo-community/HunyuanVideo transformer/config.json (diffusers' "
            "scripts/convert_hunyuan_video_to_diffusers.py builds HunyuanVideoTransformer3DModel() with these "
            "defaults); text: 256 Llama tokens",
            512,
            256,
            256,
            frames=33,
            aliases=("hunyuanvideo-community/HunyuanVideo", "hunyuan-video"),
        ),
        ModelPreset(
            "ltx-video",
            {"_class_name": "LTXVideoTransformer3DModel", "in_channels": 128, "out_channels": 128, "patch_size": 1,
             "patch_size_t": 1, "num_attention_heads": 32, "attention_head_dim": 64, "cross_attention_dim": 2048,
             "num_layers": 28, "activation_fn": "gelu-approximate", "qk_norm": "rms_norm_across_heads",
             "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096, "attention_bias": True,
             "attention_out_bias": True},
            "Lightricks/LTX-Video (2B, 0.9.x) transformer/config.json: diffusers' "
            "scripts/convert_ltx_to_diffusers.py get_transformer_config (non-0.9.7 branch); text: 128 T5 tokens",
            512,
            256,
            128,
            frames=33,
            aliases=("Lightricks/LTX-Video", "ltxvideo"),
        ),
        ModelPreset(
            "chroma",
            {"_class_name": "ChromaTransformer2DModel", "patch_size": 1, "in_channels": 64, "out_channels": None,
             "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
             "joint_attention_dim": 4096, "axes_dims_rope": [16, 56, 56], "approximator_num_channels": 64,
             "approximator_hidden_dim": 5120, "approximator_layers": 5},
            "lodestones/Chroma1-HD transformer/config.json (= ChromaTransformer2DModel defaults in diffusers 0.42, "
            "and configs re-typed in public loaders); text: 512 T5 tokens",
            512,
            256,
            512,
            aliases=("lodestones/Chroma1-HD", "chroma1-hd"),
        ),
        ModelPreset(
            "flux.2-dev",
            {**_FLUX2, "num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48,
             "joint_attention_dim": 15360, "guidance_embeds": True},
            _FLUX2_SOURCE.format(repo="FLUX.2-dev", key="flux2-dev"),
            512,
            256,
            512,
            aliases=("black-forest-labs/FLUX.2-dev", "flux2-dev"),
        ),
        ModelPreset(
            "flux.2-klein-4b",
            {**_FLUX2, "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24,
             "joint_attention_dim": 7680, "guidance_embeds": False},
            _FLUX2_SOURCE.format(repo="FLUX.2-klein-4B", key="klein-4b"),
            512,
            256,
            512,
            aliases=("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-base-4B", "flux2-klein-4b"),
        ),
        ModelPreset(
            "flux.2-klein-9b",
            {**_FLUX2, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
             "joint_attention_dim": 12288, "guidance_embeds": False},
            _FLUX2_SOURCE.format(repo="FLUX.2-klein-9B", key="klein-9b"),
            512,
            256,
            512,
            aliases=("black-forest-labs/FLUX.2-klein-9B", "black-forest-labs/FLUX.2-klein-base-9B", "flux2-klein-9b"),
        ),
        ModelPreset(
            "lumina-image-2.0",
            {"_class_name": "Lumina2Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
             "out_channels": None, "hidden_size": 2304, "num_layers": 26, "num_refiner_layers": 2,
             "num_attention_heads": 24, "num_kv_heads": 8, "multiple_of": 256, "ffn_dim_multiplier": None,
             "norm_eps": 1e-5, "scaling_factor": 1.0, "axes_dim_rope": [32, 32, 32], "axes_lens": [300, 512, 512],
             "cap_feat_dim": 2304},
            "Alpha-VLLM/Lumina-Image-2.0 transformer/config.json as re-typed in public loaders (= "
            "Lumina2Transformer2DModel defaults in diffusers 0.42 but cap_feat_dim 2304, Gemma-2-2B's width); "
            "text: 256 Gemma tokens (Lumina2Pipeline max_sequence_length)",
            1024,
            512,
            256,
            aliases=("Alpha-VLLM/Lumina-Image-2.0", "lumina2"),
        ),
        ModelPreset(
            "cogvideox-2b",
            {"_class_name": "CogVideoXTransformer3DModel", "num_layers": 30, "num_attention_heads": 30,
             "use_rotary_positional_embeddings": False},
            _COGVIDEOX_SOURCE.format(repo="CogVideoX-2b", size="2B"),
            512,
            256,
            226,
            frames=49,
            aliases=("THUDM/CogVideoX-2b", "zai-org/CogVideoX-2b"),
        ),
        ModelPreset(
            "cogvideox-5b",
            {"_class_name": "CogVideoXTransformer3DModel", "num_layers": 42, "num_attention_heads": 48,
             "use_rotary_positional_embeddings": True},
            _COGVIDEOX_SOURCE.format(repo="CogVideoX-5b", size="5B"),
            512,
            256,
            226,
            frames=49,
            aliases=("THUDM/CogVideoX-5b", "zai-org/CogVideoX-5b"),
        ),
    )
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_preset(name: str) -> ModelPreset:
    """A preset by name or alias (case-insensitive). Unknown names list every preset."""
    wanted = _normalise(name)
    for preset in PRESETS.values():
        if wanted == preset.name or wanted in (_normalise(alias) for alias in preset.aliases):
            return preset
    raise UnknownModelError(
        f"unknown model {name!r}: not a preset, and no config.json at that path. Presets: {', '.join(PRESETS)}"
    )


def _read_config(path: Path) -> dict[str, Any] | None:
    for candidate in (path, path / "config.json", path / "transformer" / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as error:
                raise UnknownModelError(f"{candidate} is not valid JSON ({error.msg}, line {error.lineno})") from error
    return None


def resolve_model(spec: str | Path | dict | nn.Module) -> tuple[dict[str, Any], ModelPreset | None, str]:
    """(config, preset or None, label) for a preset name, a config path or folder, a dict, or a model.

    A path wins over a preset of the same name; a model contributes its own `config`.
    """
    if isinstance(spec, nn.Module):
        config = dict(getattr(spec, "config", {}) or {})
        if not config:
            raise UnknownModelError(f"{type(spec).__name__} has no diffusers config to rebuild it from")
        config["_class_name"] = type(spec).__name__
        return config, None, type(spec).__name__
    if isinstance(spec, dict):
        if "_class_name" not in spec:
            raise UnknownModelError("a config dict needs its _class_name (the diffusers model class)")
        return dict(spec), None, spec["_class_name"]
    path = Path(spec)
    config = _read_config(path) if path.exists() else None
    if config is not None:
        if "_class_name" not in config:
            raise UnknownModelError(f"the config at {path} names no _class_name (the diffusers model class)")
        return config, None, path.name or str(path)
    preset = get_preset(str(spec))
    return dict(preset.config), preset, preset.name
