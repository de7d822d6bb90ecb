"""The few helpers of sd-scripts' library/train_util.py at 48d368f that the FLUX LoRA path calls (stand-in)."""

import torch


def add_dit_training_arguments(parser):
    parser.add_argument("--blocks_to_swap", type=int, default=None)
    parser.add_argument("--fp8_base_unet", action="store_true")


def verify_command_line_training_args(args):
    return None


def read_config_from_file(args, parser):
    if getattr(args, "config_file", None):
        raise NotImplementedError("the stand-in reads no config files")
    return args


def prepare_dtype(args):
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    weight_dtype = dtypes.get(args.mixed_precision, torch.float32)
    save_dtype = dtypes.get(args.save_precision, None)
    return weight_dtype, save_dtype
