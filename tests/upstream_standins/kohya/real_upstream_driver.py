"""Run the real sd-scripts flux_train_network.py on tiny models, with or without blockskip (test harness).

    python real_upstream_driver.py CHECKOUT WORKDIR {blockskip,plain,exact} [KOHYA ARGS...]

Runs in sd-scripts' own environment (tests/test_kohya_upstream.py starts it). Only the harness
is changed for the run, never the adapter's path: `flux_models.configs["dev"]` gets tiny FLUX and
AE sizes (the loaders read depth from the checkpoint and the rest from there), the CLIP-L / T5
loaders (which hard-code full-size configs) return tiny transformers models, and tokenizers are
written to --tokenizer_cache_dir. Prints one JSON line: peak memory, the LoRA's keys, losses.
"""

import dataclasses
import importlib.util
import json
import string
import sys
from pathlib import Path

import numpy as np
import torch

checkout, work, mode, *extra = sys.argv[1:]
work = Path(work)
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # the stand-in's packages must not shadow
sys.path.insert(0, checkout)
if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(1, str(HERE.parent / "torchvision_shim"))

from library import flux_models, flux_utils  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast  # noqa: E402

WIDTH = 32
TINY = dataclasses.replace(
    flux_models.configs["dev"].params, vec_in_dim=WIDTH, context_in_dim=WIDTH, hidden_size=32, mlp_ratio=2.0,
    num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[4, 6, 6],
)
TINY_AE = dataclasses.replace(flux_models.configs["dev"].ae_params, ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
flux_models.configs["dev"] = dataclasses.replace(flux_models.configs["dev"], params=TINY, ae_params=TINY_AE)


def tiny_flux():
    torch.manual_seed(0)
    model = flux_models.Flux(TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def write_models():
    save_file({k: v.contiguous() for k, v in tiny_flux().state_dict().items()}, str(work / "flux.safetensors"))
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in flux_models.AutoEncoder(TINY_AE).state_dict().items()}, str(work / "ae.safetensors"))
    chars = list(string.ascii_lowercase + string.digits)
    clip_dir = work / "tokenizers" / "openai_clip-vit-large-patch14"
    clip_dir.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    (clip_dir / "vocab.json").write_text(json.dumps(vocab))
    (clip_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt")).save_pretrained(clip_dir)
    from tokenizers import Tokenizer, models, pre_tokenizers

    t5_vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>"] + chars)}
    t5 = Tokenizer(models.WordLevel(t5_vocab, unk_token="<unk>"))
    t5.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    t5_dir = work / "tokenizers" / "google_t5-v1_1-xxl"
    t5_dir.mkdir(parents=True, exist_ok=True)
    t5.save(str(t5_dir / "tokenizer.json"))
    T5TokenizerFast(tokenizer_file=str(t5_dir / "tokenizer.json"), extra_ids=0).save_pretrained(t5_dir)
    images = work / "data" / "1_sks dog"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text("a photo of sks dog")


def load_clip_l(ckpt_path, dtype, device, disable_mmap=False, state_dict=None):
    torch.manual_seed(2)
    config = CLIPTextConfig(vocab_size=80, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, eos_token_id=1, bos_token_id=0)
    return CLIPTextModel(config).to(device=device, dtype=dtype)


def load_t5xxl(ckpt_path, dtype, device, disable_mmap=False, state_dict=None):
    torch.manual_seed(3)
    config = T5Config(vocab_size=64, d_model=WIDTH, d_kv=16, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).to(device=device, dtype=dtype)


def kohya_args():
    return [
        "--pretrained_model_name_or_path", str(work / "flux.safetensors"), "--ae", str(work / "ae.safetensors"),
        "--clip_l", "tiny", "--t5xxl", "tiny", "--tokenizer_cache_dir", str(work / "tokenizers"),
        "--train_data_dir", str(work / "data"), "--caption_extension", ".txt", "--resolution", "64",
        "--output_dir", str(work / "out"), "--output_name", "lora", "--save_model_as", "safetensors",
        "--network_module", "networks.lora_flux", "--network_dim", "4", "--network_alpha", "4",
        "--max_train_steps", "3", "--train_batch_size", "2", "--learning_rate", "1e-3", "--optimizer_type", "AdamW",
        "--mixed_precision", "no", "--t5xxl_max_token_length", "8", "--timestep_sampling", "shift",
        "--model_prediction_type", "raw", "--guidance_scale", "1.0", "--seed", "0", "--max_data_loader_n_workers", "0",
        *extra,
    ]


def exactness():
    from blockskip import apply_block_skip, remove_block_skip
    from blockskip.integrations.kohya import register_kohya_flux

    register_kohya_flux()
    model = tiny_flux()
    generator = torch.Generator().manual_seed(1)
    inputs = dict(img=torch.randn(2, 9, 64, generator=generator), img_ids=flux_utils.prepare_img_ids(2, 3, 3),
                  txt=torch.randn(2, 5, WIDTH, generator=generator), txt_ids=torch.zeros(2, 5, 3),
                  timesteps=torch.tensor([0.3, 0.8]), y=torch.randn(2, WIDTH, generator=generator),
                  guidance=torch.full((2,), 1.0))
    results = {}
    with torch.no_grad():
        full = model(**inputs)
        for leading, trailing in ((1, 0), (3, 2), (0, 3)):
            apply_block_skip(model, {"skip": {"leading": leading, "trailing": trailing}})
            img = inputs["img"].clone().requires_grad_(True)
            with torch.enable_grad():
                skipped = model(**{**inputs, "img": img})
            results[f"{leading},{trailing}"] = float((skipped - full).norm() / full.norm())
            remove_block_skip(model)
        results["bit_identical_after_removal"] = bool(torch.equal(model(**inputs), full))
    return results


if __name__ == "__main__":
    if mode == "exact":
        print("RESULT " + json.dumps(exactness()))
        sys.exit(0)
    write_models()
    flux_utils.load_clip_l, flux_utils.load_t5xxl = load_clip_l, load_t5xxl
    from blockskip.estimate.memory import measure_peak_memory

    script = Path(checkout) / "flux_train_network.py"
    with measure_peak_memory("cpu") as usage:
        if mode == "blockskip":
            from blockskip.integrations.kohya import describe, run_training

            plan = {"skip": {"leading": 3, "trailing": 1}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}}
            summary = describe(run_training(script, kohya_args(), plan))
        else:
            sys.path.insert(0, checkout)
            import flux_train_network

            parser = flux_train_network.setup_parser()
            flux_train_network.FluxNetworkTrainer().train(parser.parse_args(kohya_args()))
            summary = {}
    keys = sorted(load_file(str(work / "out" / "lora.safetensors")))
    print("RESULT " + json.dumps({"peak_increase_bytes": usage.peak_increase_bytes, "keys": keys,
                                  "summary": {k: v for k, v in summary.items() if k != "summary"}}))
