"""The quality benchmark's scripts: pretraining resumes exactly, the benchmark resumes and reports."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPTS = Path(__file__).parent.parent / "benchmarks" / "quality"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretraining_resumes_to_the_same_weights(tmp_path):
    pretrain = _load("pretrain")
    common = ["--batch-size", "2", "--checkpoint-every", "1", "--preview-every", "1000", "--threads", "1"]
    assert pretrain.main(["--out", str(tmp_path / "straight"), "--images", "8", *common]) == 0
    assert pretrain.main(["--out", str(tmp_path / "resumed"), "--images", "4", *common]) == 0  # interrupted here
    assert pretrain.main(["--out", str(tmp_path / "resumed"), "--images", "8", *common]) == 0
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert straight["step"] == resumed["step"] == 4
    for name, tensor in straight["ema"].items():
        assert torch.equal(tensor, resumed["ema"][name]), name


def test_benchmark_runs_resumes_and_reports(tmp_path, capsys):
    personalize = _load("personalize")
    run = ["--out", str(tmp_path / "run"), "--subjects", "1", "--steps", "2", "--rows", "full LoRA", "skip 40% online",
           "--no-selection", "--samples-per-prompt", "1", "--sample-steps", "2"]
    assert personalize.main(run) == 0
    results = tmp_path / "run" / "results_0_1.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["row"] for r in records] == ["full LoRA @32", "skip 40% online"]
    assert records[1]["memory_bytes"] < records[0]["memory_bytes"] and records[1]["reload_error"] < 1e-5
    assert personalize.main(run) == 0  # resumed: nothing left to do
    assert len(results.read_text().splitlines()) == 2
    report = tmp_path / "docs" / "quality_results.md"
    assert personalize.main([*run[:2], "--report", str(report), "--grid-subjects", "1"]) == 0
    table = report.read_text()
    assert "| full LoRA @32 |" in table and "1.00× | 1.00× |" in table and "| skip 40% online |" in table
    assert (tmp_path / "docs" / "images" / "quality_skip_40__online.png").exists()
