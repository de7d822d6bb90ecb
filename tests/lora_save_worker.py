"""Saves a tiny FLUX LoRA with `save_lora`, stalling at a chosen point so a test can kill it there.

    python lora_save_worker.py FOLDER LEADING FILL [weights|plan|none]

`weights`: the staged weights file is half written when the worker stalls; `plan`: the weights
are committed and the plan beside them is not yet rewritten. Prints STALLED, then sleeps.
"""

import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny  # noqa: E402

import blockskip.skipping.lora as lora_module  # noqa: E402
from blockskip import apply_block_skip, lora_target_modules, save_lora  # noqa: E402
from blockskip.skipping.skip import BlockSkipHandle  # noqa: E402


def stall() -> None:
    print("STALLED", flush=True)
    time.sleep(600)


def main(folder: str, leading: int, fill: float, stall_at: str) -> None:
    case = build_tiny("FluxTransformer2DModel")
    apply_block_skip(case.model, {"skip": {"leading": leading, "trailing": 1}})
    case.model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=lora_target_modules(case.model)))
    with torch.no_grad():
        for name, parameter in case.model.named_parameters():
            if "lora_" in name:
                parameter.fill_(fill)
    if stall_at == "weights":
        write = lora_module.save_file

        def half_written(tensors, path, metadata=None):
            write(tensors, path, metadata=metadata)
            with open(path, "r+b") as file:
                file.truncate(Path(path).stat().st_size // 2)
            stall()

        lora_module.save_file = half_written
    elif stall_at == "plan":
        BlockSkipHandle.save_plan = lambda self, directory: stall()
    save_lora(case.model, folder)
    print("SAVED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
