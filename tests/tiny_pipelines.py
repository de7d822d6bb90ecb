"""Tiny, complete diffusers pipeline folders for FLUX, SD3 and Sana, built offline from configs.

`build_tiny_pipeline(family, folder)` writes a folder that `DiffusionPipeline.from_pretrained`
(and the diffusers training scripts, which load each component by subfolder) read like a real
checkpoint: `model_index.json`, a scheduler, a VAE, tokenizers made from a small vocabulary with
the `tokenizers`-backed classes of `transformers`, tiny text encoders from `transformers`
configs, and a tiny transformer. Every weight is random (seeded); nothing touches the network.

Sizes follow the real models where the pipelines depend on them: 16 latent channels and an
8× VAE for FLUX and SD3 (64 px → 8×8 latents → 16 image tokens), a 32× DC-AE for Sana
(128 px → 4×4 latents → 16 image tokens), two CLIP encoders plus T5 for SD3, CLIP plus T5 for
FLUX, Gemma 2 for Sana. Recommended call arguments, which keep generation fast and within the
tiny tokenizers' lengths, are in `PIPELINE_CALL_DEFAULTS`.

Example:
    folder = build_tiny_pipeline("flux", tmp_path / "flux")
    pipe = FluxPipeline.from_pretrained(folder)
    image = pipe("a photo of sks dog", num_inference_steps=2, **PIPELINE_CALL_DEFAULTS["flux"]).images[0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WORDS = (
    "a an the photo picture painting of in on at with and sks dog cat toy robot backpack vase "
    "beach snow forest city street table kitchen red blue green yellow black white small large"
).split()
TEXT_WIDTH = 32  # T5 / Gemma width = transformer text width
MAX_TOKENS = 16  # tokenizer model_max_length and recommended max_sequence_length

FAMILY_ALIASES = {
    "flux": "flux",
    "fluxtransformer2dmodel": "flux",
    "fluxpipeline": "flux",
    "sd3": "sd3",
    "sd3transformer2dmodel": "sd3",
    "stablediffusion3pipeline": "sd3",
    "sana": "sana",
    "sanatransformer2dmodel": "sana",
    "sanapipeline": "sana",
}
FAMILIES = ("flux", "sd3", "sana")
PIPELINE_CLASSES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline", "sana": "SanaPipeline"}
TRANSFORMER_CLASSES = {
    "flux": "FluxTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "sana": "SanaTransformer2DModel",
}

# Keyword arguments for the pipeline call that suit the tiny folders.
PIPELINE_CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "flux": {"height": 64, "width": 64, "max_sequence_length": MAX_TOKENS, "guidance_scale": 3.5},
    "sd3": {"height": 64, "width": 64, "max_sequence_length": MAX_TOKENS, "guidance_scale": 4.0},
    "sana": {
        "height": 128,
        "width": 128,
        "max_sequence_length": MAX_TOKENS,
        "guidance_scale": 4.5,
        "use_resolution_binning": False,
        "complex_human_instruction": None,
    },
}


def family_name(family: str) -> str:
    """'flux', 'sd3' or 'sana' for a family name, transformer class or pipeline class."""
    key = FAMILY_ALIASES.get(family.lower())
    if key is None:
        raise KeyError(f"no tiny pipeline for {family!r}; expected one of {FAMILIES}")
    return key


# ----------------------------------------------------------------------------- tokenizers


def _bpe_vocab(end_of_word: str | None, prefix: str = "") -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Characters, then every prefix of every word as BPE merges, so each word is one token."""
    symbols, merges = [], []
    characters = sorted(set("".join(WORDS)))
    for character in characters:
        symbols.append(prefix + character)
        if prefix:
            merges.append((prefix, character))
        if end_of_word:
            symbols.append(character + end_of_word)
    for word in WORDS:
        pieces = [prefix + word[0]] + list(word[1:])
        if end_of_word:
            pieces[-1] = pieces[-1] + end_of_word
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            merges.append((current, piece))
            if merged not in symbols:
                symbols.append(merged)
            current = merged
    return symbols, merges, characters


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    symbols, merges, _ = _bpe_vocab("</w>")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=MAX_TOKENS)


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in WORDS]
    pieces += [(character, -5.0) for character in sorted(set("".join(WORDS)))]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def _gemma_tokenizer():
    from transformers import GemmaTokenizerFast

    symbols, merges, _ = _bpe_vocab(None, prefix="▁")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for symbol in symbols + sorted(set("".join(WORDS))):
        vocab.setdefault(symbol, len(vocab))
    return GemmaTokenizerFast(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=MAX_TOKENS)


# ----------------------------------------------------------------------------- text encoders


def _clip_text(vocab_size: int, width: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=width,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=TEXT_WIDTH, d_kv=8, d_ff=2 * TEXT_WIDTH, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5EncoderModel(config)


def _gemma2(vocab_size: int):
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return Gemma2Model(config)


# ----------------------------------------------------------------------------- VAEs


def _vae_kl(shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=16, norm_num_groups=4,
        sample_size=64, scaling_factor=1.5, shift_factor=shift_factor, use_quant_conv=False,
        use_post_quant_conv=False, mid_block_add_attention=False,
    )


def _vae_dc():
    from diffusers import AutoencoderDC

    stages = 6  # 2^(6 - 1) = 32 pixels per latent, like DC-AE f32
    return AutoencoderDC(
        latent_channels=8, attention_head_dim=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8,) * stages, decoder_block_out_channels=(8,) * stages,
        encoder_layers_per_block=(1,) * stages, decoder_layers_per_block=(1,) * stages,
        encoder_qkv_multiscales=((),) * stages, decoder_qkv_multiscales=((),) * stages, scaling_factor=0.5,
    )


# ----------------------------------------------------------------------------- families


def _flux(overrides: dict) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    transformer = dict(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        ),
        "vae": _vae_kl(shift_factor=0.1),
        "text_encoder": _clip_text(len(clip), TEXT_WIDTH, with_projection=False),
        "tokenizer": clip,
        "text_encoder_2": _t5(len(t5)),
        "tokenizer_2": t5,
        "transformer": FluxTransformer2DModel(**{**transformer, **overrides}),
    }


def _sd3(overrides: dict) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    clip_width = TEXT_WIDTH // 2  # the two CLIP widths add up to T5's
    transformer = dict(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=5, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * clip_width, pos_embed_max_size=16,
    )
    return {
        "transformer": SD3Transformer2DModel(**{**transformer, **overrides}),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": _vae_kl(shift_factor=0.05),
        "text_encoder": _clip_text(len(clip), clip_width, with_projection=True),
        "tokenizer": clip,
        "text_encoder_2": _clip_text(len(clip), clip_width, with_projection=True),
        "tokenizer_2": _clip_tokenizer(),
        "text_encoder_3": _t5(len(t5)),
        "tokenizer_3": t5,
    }


def _sana(overrides: dict) -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler, SanaTransformer2DModel

    gemma = _gemma_tokenizer()
    transformer = dict(
        in_channels=8, out_channels=8, num_layers=5, num_attention_heads=2, attention_head_dim=16,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
        caption_channels=TEXT_WIDTH, sample_size=4, patch_size=1,
    )
    return {
        "tokenizer": gemma,
        "text_encoder": _gemma2(len(gemma)),
        "vae": _vae_dc(),
        "transformer": SanaTransformer2DModel(**{**transformer, **overrides}),
        "scheduler": DPMSolverMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
    }


_BUILDERS = {"flux": _flux, "sd3": _sd3, "sana": _sana}


def build_tiny_pipeline(family: str, folder: str | Path, seed: int = 0, **transformer_overrides: Any) -> Path:
    """Write a tiny pipeline of `family` ('flux', 'sd3', 'sana' or a class name) into `folder`.

    `transformer_overrides` update the tiny transformer's config (for example `num_layers=8`).
    Returns the folder; load it with the pipeline class (`PIPELINE_CLASSES[family]`) or
    `DiffusionPipeline.from_pretrained`.
    """
    family = family_name(family)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _BUILDERS[family](transformer_overrides)
    index = {"_class_name": PIPELINE_CLASSES[family], "_diffusers_version": _diffusers_version()}
    for name, component in components.items():
        component.save_pretrained(folder / name)
        library = "diffusers" if type(component).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(component).__name__]
    if family == "flux":
        index.update(image_encoder=[None, None], feature_extractor=[None, None])
    if family == "sd3":
        index.update(image_encoder=[None, None], feature_extractor=[None, None])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def load_tiny_pipeline(family: str, folder: str | Path):
    """Load a folder written by `build_tiny_pipeline` with its pipeline class (fp32, CPU)."""
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[family_name(family)]).from_pretrained(folder)


def save_tiny_lora(
    family: str, folder: str | Path, out: str | Path, seed: int = 0, rank: int = 4,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> Path:
    """Write a LoRA with random, non-zero weights for the pipeline in `folder` to `out`.

    Saved with the pipeline class's `save_lora_weights`, as the training scripts do, so
    `pipeline.load_lora_weights(out)` loads it.
    """
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[family_name(family)])
    transformer = getattr(diffusers, TRANSFORMER_CLASSES[family_name(family)]).from_pretrained(
        Path(folder) / "transformer"
    )
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config)
    pipeline_class.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return Path(out)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
