"""DDP with two CPU processes (gloo) through accelerate: one step, identical LoRA weights on both ranks."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_two_process_ddp_step_keeps_ranks_identical(tmp_path):
    worker = Path(__file__).parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "backend=gloo" in result.stdout
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    assert all(name.startswith("single_transformer_blocks.1.") for name in rank0)  # the only kept block
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # LoRA B starts at zero: a non-zero B proves the step trained (on different data per rank).
    assert any(rank0[name].abs().sum() > 0 for name in rank0 if "lora_B" in name)
