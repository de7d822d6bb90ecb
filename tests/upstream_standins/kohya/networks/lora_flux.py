"""kohya's FLUX LoRA network (`create_network`, `create_network_from_weights`, `LoRANetwork`) with the
interface, module search and key names of sd-scripts' networks/lora_flux.py at 48d368f (stand-in):
targets are the Linear layers inside modules whose class is named DoubleStreamBlock or
SingleStreamBlock; `lora_unet_double_blocks_3_img_attn_qkv` style names, the block index parsed
from the name; `train_double_block_indices` / `train_single_block_indices` in kohya's syntax."""

import os

import torch
from safetensors.torch import load_file, save_file

NUM_DOUBLE_BLOCKS = 19
NUM_SINGLE_BLOCKS = 38


class LoRAModule(torch.nn.Module):
    def __init__(self, lora_name, org_module, multiplier=1.0, lora_dim=4, alpha=1, **kwargs):
        super().__init__()
        self.lora_name, self.lora_dim, self.multiplier = lora_name, lora_dim, multiplier
        self.lora_down = torch.nn.Linear(org_module.in_features, lora_dim, bias=False)
        self.lora_up = torch.nn.Linear(lora_dim, org_module.out_features, bias=False)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / lora_dim
        torch.nn.init.kaiming_uniform_(self.lora_down.weight, a=5**0.5)
        torch.nn.init.zeros_(self.lora_up.weight)
        self.org_module = [org_module]

    def apply_to(self):
        module = self.org_module[0]
        self.org_forward = module.forward
        module.forward = self.forward

    def forward(self, x):
        return self.org_forward(x) + self.lora_up(self.lora_down(x)) * self.multiplier * self.scale


def parse_block_selection(selection, total_blocks):
    if selection == "all":
        return [True] * total_blocks
    if selection in ("none", ""):
        return [False] * total_blocks
    selected = [False] * total_blocks
    for part in selection.split(","):
        start, _, end = part.partition("-")
        for index in range(int(start), int(end or start) + 1):
            assert 0 <= index < total_blocks, f"invalid index: {index}"
            selected[index] = True
    return selected


class LoRANetwork(torch.nn.Module):
    FLUX_TARGET_REPLACE_MODULE_DOUBLE = ["DoubleStreamBlock"]
    FLUX_TARGET_REPLACE_MODULE_SINGLE = ["SingleStreamBlock"]
    LORA_PREFIX_FLUX = "lora_unet"

    def __init__(self, text_encoders, unet, multiplier=1.0, lora_dim=4, alpha=1, modules_dim=None, modules_alpha=None,
                 train_double_block_indices=None, train_single_block_indices=None, **kwargs):
        super().__init__()
        self.multiplier = multiplier
        self.text_encoder_loras = []
        self.unet_loras = []
        targets = self.FLUX_TARGET_REPLACE_MODULE_DOUBLE + self.FLUX_TARGET_REPLACE_MODULE_SINGLE
        for name, module in unet.named_modules():
            if module.__class__.__name__ not in targets:
                continue
            for child_name, child in module.named_modules():
                if child.__class__.__name__ != "Linear":
                    continue
                lora_name = f"{self.LORA_PREFIX_FLUX}.{name}.{child_name}".replace(".", "_")
                if modules_dim is not None:
                    if lora_name not in modules_dim:
                        continue
                    dim, module_alpha = modules_dim[lora_name], modules_alpha[lora_name]
                else:
                    dim, module_alpha = lora_dim, alpha
                    block_index = int(lora_name.split("_")[4])
                    if "double" in lora_name and train_double_block_indices is not None and not train_double_block_indices[block_index]:
                        continue
                    if "single" in lora_name and train_single_block_indices is not None and not train_single_block_indices[block_index]:
                        continue
                self.unet_loras.append(LoRAModule(lora_name, child, multiplier, dim, module_alpha))

    def set_multiplier(self, multiplier):
        self.multiplier = multiplier
        for lora in self.unet_loras:
            lora.multiplier = multiplier

    def apply_to(self, text_encoders, flux, apply_text_encoder=True, apply_unet=True):
        for lora in self.unet_loras:
            lora.apply_to()
            self.add_module(lora.lora_name, lora)

    def load_weights(self, file):
        return self.load_state_dict(load_file(file), False)

    def prepare_optimizer_params(self, unet_lr):
        return [{"params": [p for lora in self.unet_loras for p in lora.parameters()], "lr": unet_lr}]

    def enable_gradient_checkpointing(self):
        pass

    def prepare_grad_etc(self, text_encoder, unet):
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder, unet):
        self.train()

    def get_trainable_params(self):
        return self.parameters()

    def save_weights(self, file, dtype, metadata):
        state_dict = {k: v.detach().clone().to("cpu", dtype or v.dtype) for k, v in self.state_dict().items()}
        if os.path.splitext(file)[1] == ".safetensors":
            save_file(state_dict, file, metadata or None)
        else:
            torch.save(state_dict, file)


def create_network(multiplier, network_dim, network_alpha, ae, text_encoders, flux, neuron_dropout=None, **kwargs):
    double = kwargs.get("train_double_block_indices")
    single = kwargs.get("train_single_block_indices")
    return LoRANetwork(
        text_encoders, flux, multiplier=multiplier, lora_dim=network_dim or 4, alpha=network_alpha or 1.0,
        train_double_block_indices=parse_block_selection(double, NUM_DOUBLE_BLOCKS) if double is not None else None,
        train_single_block_indices=parse_block_selection(single, NUM_SINGLE_BLOCKS) if single is not None else None,
    )


def create_network_from_weights(multiplier, file, ae, text_encoders, flux, weights_sd=None, for_inference=False, **kwargs):
    if weights_sd is None:
        weights_sd = load_file(file)
    modules_dim, modules_alpha = {}, {}
    for key, value in weights_sd.items():
        lora_name = key.split(".")[0]
        if "alpha" in key:
            modules_alpha[lora_name] = value
        elif "lora_down" in key:
            modules_dim[lora_name] = value.size(0)
    network = LoRANetwork(text_encoders, flux, multiplier=multiplier, modules_dim=modules_dim, modules_alpha=modules_alpha)
    return network, weights_sd
