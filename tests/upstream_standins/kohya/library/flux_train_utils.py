"""Timestep sampling and FLUX arguments with the names of sd-scripts' library/flux_train_utils.py at 48d368f (stand-in)."""

import math

import torch


def _shift(sigmas, shift):
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def get_noisy_model_input_and_timesteps(args, noise_scheduler, latents, noise, device, dtype):
    batch, height, width = latents.shape[0], latents.shape[-2], latents.shape[-1]
    count = noise_scheduler.config.num_train_timesteps
    if args.timestep_sampling == "uniform":
        sigmas = torch.rand(batch, device=device)
    elif args.timestep_sampling == "sigmoid":
        sigmas = torch.sigmoid(args.sigmoid_scale * torch.randn(batch, device=device))
    elif args.timestep_sampling == "shift":
        sigmas = _shift(torch.sigmoid(args.sigmoid_scale * torch.randn(batch, device=device)), args.discrete_flow_shift)
    elif args.timestep_sampling == "flux_shift":
        tokens = (height // 2) * (width // 2)
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        sigmas = _shift(torch.sigmoid(args.sigmoid_scale * torch.randn(batch, device=device)), math.exp(mu))
    else:  # "sigma": u indexes the scheduler's descending, shifted table
        u = torch.rand(batch)
        sigmas = noise_scheduler.sigmas[(u * count).long()].to(device)
    timesteps = sigmas * count
    sigmas = sigmas.view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    return noisy.to(dtype), timesteps.to(dtype), sigmas


def apply_model_prediction_type(args, model_pred, noisy_model_input, sigmas):
    if args.model_prediction_type == "sigma_scaled":
        return model_pred * (-sigmas) + noisy_model_input, None
    return model_pred, None


def sample_images(accelerator, args, epoch, steps, flux, ae, text_encoders, sample_prompts_te_outputs):
    return None


def add_flux_train_arguments(parser):
    parser.add_argument("--clip_l", type=str)
    parser.add_argument("--t5xxl", type=str)
    parser.add_argument("--ae", type=str)
    parser.add_argument("--model_type", type=str, default="flux", choices=["flux", "chroma"])
    parser.add_argument("--t5xxl_max_token_length", type=int)
    parser.add_argument("--apply_t5_attn_mask", action="store_true")
    parser.add_argument("--guidance_scale", type=float, default=3.5)
    parser.add_argument("--timestep_sampling", default="sigma", choices=["sigma", "uniform", "sigmoid", "shift", "flux_shift"])
    parser.add_argument("--sigmoid_scale", type=float, default=1.0)
    parser.add_argument("--model_prediction_type", default="sigma_scaled", choices=["raw", "additive", "sigma_scaled"])
    parser.add_argument("--discrete_flow_shift", type=float, default=3.0)
