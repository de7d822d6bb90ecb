"""benchmarks/gpu_check.py runs its whole code path on the CPU with a tiny config, so it cannot rot."""

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_measures_every_case_beside_its_estimate(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "results"
    report = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--out", str(out)])
    cases = {row["case"]: row for row in report["cases"]}
    assert list(cases) == [case.name for case in gpu_check.CASES]
    assert "CUDA" in cases["group offload + checkpointing"]["skipped"]  # the one case a CPU cannot run
    for name, row in cases.items():
        if "skipped" in row:
            continue
        measured = row["measured"]["resident_plus_peak_increase"]
        assert row["estimated"]["peak_bytes"] == pytest.approx(measured, rel=0.15), name
        assert row["measured"]["median_seconds"] > 0 and row["estimated"]["seconds"] > 0
    assert cases["cached 50%"]["plan"]["residuals"]["mode"] == "cached"
    assert json.loads((out / "gpu_check-cpu.json").read_text()) == report
    table = (out / "gpu_check-cpu.md").read_text()
    assert "| cached 50% | 32 |" in table and "uncalibrated" in table and "| LoRA baseline | 64 |" in table
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("blockskip")]  # the bank's scratch folder is gone
