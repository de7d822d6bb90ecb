"""`NetworkTrainer` with the stage methods and loop order of sd-scripts' train_network.py at 48d368f (stand-in).

One process, no accelerate: a small `_Accelerator` offers the attributes the loop uses. The
dataset yields whole batches, as kohya's DatasetGroup does: images from --train_data_dir resized
to --resolution in [-1, 1] (or latents, with --cache_latents), captions from the file names.
"""

import argparse
import contextlib
import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from library import train_util


class _Accelerator:
    device = torch.device("cpu")
    is_main_process = True

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, model):
        return model

    def prepare(self, *objects):
        return objects[0] if len(objects) == 1 else objects

    def backward(self, loss):
        loss.backward()

    def print(self, *args):
        return None


class _Dataset(SimpleNamespace):
    """Batches of `batch_size` images at `resolution`, captioned by file name."""

    def __init__(self, folder, resolution, batch_size):
        files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".png", ".jpg"))
        super().__init__(files=files, resolution=(resolution, resolution), batch_size=batch_size, latents=None)

    def batch(self, index):
        chosen = [self.files[(index * self.batch_size + i) % len(self.files)] for i in range(self.batch_size)]
        images = []
        for path in chosen:
            image = Image.open(path).convert("RGB").resize(self.resolution, Image.BICUBIC)
            images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        images = torch.stack(images)
        latents = self.latents[[self.files.index(p) for p in chosen]] if self.latents is not None else None
        return {
            "images": None if latents is not None else images,
            "latents": latents,
            "captions": [p.stem for p in chosen],
            "loss_weights": torch.ones(len(chosen)),
        }


class NetworkTrainer:
    def __init__(self):
        self.vae_scale_factor = 8

    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        return None

    def load_target_model(self, args, weight_dtype, accelerator):
        raise NotImplementedError

    def get_noise_scheduler(self, args, device):
        raise NotImplementedError

    def encode_images_to_latents(self, args, vae, images):
        return vae.encode(images)

    def shift_scale_latents(self, args, latents):
        return latents

    def post_process_network(self, args, accelerator, network, text_encoders, unet):
        return None

    def sample_images(self, accelerator, args, epoch, global_step, device, vae, tokenizer, text_encoder, unet):
        return None

    def update_metadata(self, metadata, args):
        return None

    def encode_text(self, text_encoders, captions, length=7):
        ids = torch.tensor([[ord(c) % 256 for c in (caption * length)[:length]] for caption in captions])
        clip_l, t5 = text_encoders
        return [clip_l(ids).mean(dim=1), t5(ids), torch.zeros(len(captions), length, 3), torch.ones(len(captions), length)]

    def process_batch(self, batch, text_encoders, unet, network, vae, noise_scheduler, vae_dtype, weight_dtype,
                      accelerator, args, text_encoding_strategy, tokenize_strategy, is_train=True,
                      train_text_encoder=True, train_unet=True):
        with torch.no_grad():
            if "latents" in batch and batch["latents"] is not None:
                latents = batch["latents"].to(accelerator.device)
            else:
                latents = self.encode_images_to_latents(args, vae, batch["images"].to(accelerator.device, dtype=vae_dtype))
            latents = self.shift_scale_latents(args, latents)
            text_encoder_conds = self.encode_text(text_encoders, batch["captions"])
        noise_pred, target, timesteps, weighting = self.get_noise_pred_and_target(
            args, accelerator, noise_scheduler, latents, batch, text_encoder_conds, unet, network, weight_dtype,
            train_unet, is_train=is_train,
        )
        loss = torch.nn.functional.mse_loss(noise_pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, loss.ndim))) * batch["loss_weights"]
        return loss.mean()

    def train(self, args):
        torch.manual_seed(args.seed)
        dataset = _Dataset(args.train_data_dir, int(str(args.resolution).split(",")[0]), args.train_batch_size)
        group = SimpleNamespace(datasets=[dataset])
        self.assert_extra_args(args, group, None)
        accelerator = _Accelerator()
        weight_dtype, save_dtype = train_util.prepare_dtype(args)
        model_version, text_encoders, vae, unet = self.load_target_model(args, weight_dtype, accelerator)
        if args.cache_latents:
            everything = _Dataset(args.train_data_dir, dataset.resolution[0], len(dataset.files))
            with torch.no_grad():
                dataset.latents = self.encode_images_to_latents(args, vae, everything.batch(0)["images"])

        network_module = importlib.import_module(args.network_module)
        net_kwargs = dict(arg.split("=", 1) for arg in (args.network_args or []))
        if args.dim_from_weights:
            network, _ = network_module.create_network_from_weights(1, args.network_weights, vae, text_encoders, unet, **net_kwargs)
        else:
            network = network_module.create_network(1.0, args.network_dim, args.network_alpha, vae, text_encoders, unet,
                                                    neuron_dropout=args.network_dropout, **net_kwargs)
        self.post_process_network(args, accelerator, network, text_encoders, unet)
        network.apply_to(text_encoders, unet, False, True)
        if args.network_weights is not None:
            network.load_weights(args.network_weights)
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing(cpu_offload=args.cpu_offload_checkpointing)
            network.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(network.prepare_optimizer_params(args.learning_rate), lr=args.learning_rate)
        unet.requires_grad_(False)
        unet.to(accelerator.device, dtype=weight_dtype)
        unet.train() if args.gradient_checkpointing else unet.eval()
        network.prepare_grad_etc(text_encoders, unet)
        noise_scheduler = self.get_noise_scheduler(args, accelerator.device)
        network.on_epoch_start(text_encoders, unet)
        self.losses = []
        for step in range(args.max_train_steps):
            loss = self.process_batch(dataset.batch(step), text_encoders, unet, network, vae, noise_scheduler,
                                      weight_dtype, weight_dtype, accelerator, args, None, None, is_train=True,
                                      train_text_encoder=False, train_unet=True)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.losses.append(loss.item())
        metadata = {"ss_network_module": args.network_module, "ss_network_dim": str(args.network_dim)}
        self.update_metadata(metadata, args)
        os.makedirs(args.output_dir, exist_ok=True)
        network.save_weights(os.path.join(args.output_dir, args.output_name + ".safetensors"), save_dtype, metadata)


def setup_parser():
    parser = argparse.ArgumentParser()
    for name in ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "network_module", "network_weights",
                 "mixed_precision", "save_precision", "config_file", "dataset_config"):
        parser.add_argument(f"--{name}", type=str, default=None)
    parser.add_argument("--output_name", type=str, default="last")
    parser.add_argument("--resolution", type=str, default=None)
    parser.add_argument("--network_dim", type=int, default=None)
    parser.add_argument("--network_alpha", type=float, default=1.0)
    parser.add_argument("--network_dropout", type=float, default=None)
    parser.add_argument("--network_args", type=str, default=None, nargs="*")
    parser.add_argument("--base_weights", type=str, default=None, nargs="*")
    parser.add_argument("--max_train_steps", type=int, default=1600)
    parser.add_argument("--train_batch_size", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ip_noise_gamma", type=float, default=None)
    for flag in ("gradient_checkpointing", "cpu_offload_checkpointing", "fp8_base", "cache_latents", "cache_latents_to_disk",
                 "masked_loss", "dim_from_weights", "network_train_unet_only", "network_train_text_encoder_only",
                 "ip_noise_gamma_random_strength"):
        parser.add_argument(f"--{flag}", action="store_true")
    return parser
