"""A precompute sharded over two processes (gloo, CPU) gives the same bank as one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from blockskip.residuals.bank import BankReader

WORKER = Path(__file__).parent / "precompute_worker.py"


def test_two_process_precompute_equals_single_process(tmp_path):
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "single")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
         str(WORKER), str(tmp_path / "double"), "distributed"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = BankReader(tmp_path / "single"), BankReader(tmp_path / "double")
    assert sorted(one.keys) == sorted(two.keys) == [f"e{i}" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "double").iterdir()) == ["manifest.json", "part-00000", "part-00001"]
    for field in ("model", "spans", "schedule", "dtype", "entries"):
        assert one.manifest[field] == two.manifest[field], field
    for key in one.keys:
        a, b = one.entry(key), two.entry(key)
        assert a.keys() == b.keys()
        for name in a:
            # Chunks group different samples in the two runs; batched matmuls may round differently.
            assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), (key, name)
