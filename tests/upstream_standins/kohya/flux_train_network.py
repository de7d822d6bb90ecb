"""`FluxNetworkTrainer` with the methods and main block of sd-scripts' flux_train_network.py at 48d368f (stand-in)."""

import copy
from types import SimpleNamespace

import torch

import train_network
from library import flux_models, flux_train_utils, flux_utils, train_util


class FluxNetworkTrainer(train_network.NetworkTrainer):
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        super().assert_extra_args(args, train_dataset_group, val_dataset_group)
        assert not (args.blocks_to_swap and args.cpu_offload_checkpointing), "blocks_to_swap is not supported with cpu_offload_checkpointing"
        if args.split_mode and args.blocks_to_swap is None:
            args.blocks_to_swap = 18

    def load_target_model(self, args, weight_dtype, accelerator):
        _, model = flux_utils.load_flow_model(args.pretrained_model_name_or_path, weight_dtype, "cpu")
        if args.blocks_to_swap:
            model.enable_block_swap(args.blocks_to_swap, accelerator.device)
        clip_l = flux_utils.load_clip_l(args.clip_l, weight_dtype, "cpu")
        t5xxl = flux_utils.load_t5xxl(args.t5xxl, weight_dtype, "cpu")
        ae = flux_utils.load_ae(args.ae, weight_dtype, "cpu")
        return flux_utils.MODEL_VERSION_FLUX_V1, [clip_l, t5xxl], ae, model

    def get_noise_scheduler(self, args, device):
        steps = torch.linspace(1.0, 1.0 / 1000, 1000)
        sigmas = steps * args.discrete_flow_shift / (1 + (args.discrete_flow_shift - 1) * steps)
        noise_scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000), sigmas=sigmas, timesteps=sigmas * 1000)
        self.noise_scheduler_copy = copy.deepcopy(noise_scheduler)
        return noise_scheduler

    def get_noise_pred_and_target(self, args, accelerator, noise_scheduler, latents, batch, text_encoder_conds,
                                  unet: flux_models.Flux, network, weight_dtype, train_unet, is_train=True):
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        noisy_model_input, timesteps, sigmas = flux_train_utils.get_noisy_model_input_and_timesteps(
            args, noise_scheduler, latents, noise, accelerator.device, weight_dtype
        )
        packed = flux_utils.pack_latents(noisy_model_input)
        height, width = noisy_model_input.shape[2] // 2, noisy_model_input.shape[3] // 2
        img_ids = flux_utils.prepare_img_ids(bsz, height, width).to(device=accelerator.device)
        guidance_vec = torch.full((bsz,), float(args.guidance_scale), device=accelerator.device)
        if args.gradient_checkpointing:
            noisy_model_input.requires_grad_(True)
        l_pooled, t5_out, txt_ids, t5_attn_mask = text_encoder_conds
        if not args.apply_t5_attn_mask:
            t5_attn_mask = None
        with torch.set_grad_enabled(is_train), accelerator.autocast():
            model_pred = unet(img=packed, img_ids=img_ids, txt=t5_out, txt_ids=txt_ids, y=l_pooled, timesteps=timesteps / 1000,
                              guidance=guidance_vec, txt_attention_mask=t5_attn_mask, mod_vectors=None)
        model_pred = flux_utils.unpack_latents(model_pred, height, width)
        model_pred, weighting = flux_train_utils.apply_model_prediction_type(args, model_pred, noisy_model_input, sigmas)
        return model_pred, noise - latents, timesteps, weighting

    def sample_images(self, accelerator, args, epoch, global_step, device, ae, tokenizer, text_encoder, flux):
        return flux_train_utils.sample_images(accelerator, args, epoch, global_step, flux, ae, text_encoder, None)

    def update_metadata(self, metadata, args):
        metadata["ss_timestep_sampling"] = args.timestep_sampling


def setup_parser():
    parser = train_network.setup_parser()
    train_util.add_dit_training_arguments(parser)
    flux_train_utils.add_flux_train_arguments(parser)
    parser.add_argument("--split_mode", action="store_true")
    return parser


if __name__ == "__main__":
    parser = setup_parser()
    args = parser.parse_args()
    train_util.verify_command_line_training_args(args)
    args = train_util.read_config_from_file(args, parser)
    trainer = FluxNetworkTrainer()
    trainer.train(args)
