"""One DDP training step on a skipped tiny FLUX; run by tests/test_ddp.py under torchrun (2 CPU ranks)."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny  # noqa: E402

from blockskip import apply_block_skip, get_block_skip, lora_target_modules  # noqa: E402


def main(out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    case = build_tiny("FluxTransformer2DModel")
    apply_block_skip(case.model, {"skip": {"leading": 4, "trailing": 2}})
    case.model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=lora_target_modules(case.model)))
    case.model.train()
    optimizer = torch.optim.AdamW([p for p in case.model.parameters() if p.requires_grad], lr=1e-2)
    model, optimizer = accelerator.prepare(case.model, optimizer)
    assert get_block_skip(model) is not None  # found through the DDP wrapper
    inputs = case.inputs(seed=100 + accelerator.process_index, batch=2)  # different data per rank
    loss = case.output(model(**inputs)).square().mean()
    accelerator.backward(loss)
    optimizer.step()
    lora = {name: p.detach().clone() for name, p in accelerator.unwrap_model(model).named_parameters() if "lora_" in name}
    save_file(lora, f"{out_dir}/rank{accelerator.process_index}.safetensors")
    print(f"rank {accelerator.process_index}/{accelerator.num_processes} backend={torch.distributed.get_backend()}")


if __name__ == "__main__":
    main(sys.argv[1])
