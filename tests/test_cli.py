"""The `blockskip` command: demo end to end, inspect, and clear errors for bad plans."""

import json
import subprocess
import sys
import tempfile

from blockskip.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--steps", "4", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    for row in ("pretrained, no LoRA", "full LoRA @64", "skip (online) @64", "BlockSkip (online) @32", "naive skip (no Δ) @32"):
        assert row in printed
    assert "— ok." in printed
    saved = sorted(p.name for p in (tmp_path / "demo" / "lora").iterdir())
    assert saved == ["blockskip_plan.json", "pytorch_lora_weights.safetensors"]
    assert (tmp_path / "demo" / "samples.png").stat().st_size > 0


def test_demo_takes_a_plan_and_leaves_no_scratch(tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "system-temp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"skip": {"leading": 2, "trailing": 1}, "residuals": {"mode": "cached", "bank": "unused"}}))
    assert main(["demo", "--steps", "2", "--plan", str(plan), "--out", str(tmp_path / "demo")]) == 0
    assert "skipping 2 leading + 1 trailing" in capsys.readouterr().out
    assert [path.name for path in scratch.iterdir() if path.name.startswith("blockskip")] == []


def test_demo_keeps_every_run_in_the_work_dir(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"skip": {"leading": 2, "trailing": 1}, "residuals": {"mode": "cached", "bank": "unused"}}))
    work = tmp_path / "work"
    assert main(["demo", "--steps", "2", "--plan", str(plan), "--out", str(tmp_path / "demo"), "--work-dir", str(work)]) == 0
    assert sorted(path.name for path in work.iterdir()) == ["naive-skip", "skip-only"]  # full LoRA is never saved
    assert (work / "skip-only" / "bank").is_dir() and (work / "skip-only" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_inspect_shows_layout_and_plan(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"skip": {"ratio": 0.5}}))
    assert main(["inspect", "--plan", str(plan)]) == 0
    printed = capsys.readouterr().out
    assert "FluxTransformer2DModel: 12 blocks" in printed
    assert "transformer_blocks" in printed and "0-3 skipped (leading)" in printed
    assert "6-7 skipped (trailing)" in printed and "0-5 kept, LoRA here" in printed


def test_inspect_reads_a_config_without_weights(tmp_path, capsys):
    # FLUX.1-dev's released transformer config: built on the meta device, nothing allocated.
    config = {
        "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 19,
        "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
        "axes_dims_rope": [16, 56, 56],
    }
    folder = tmp_path / "FLUX.1-dev" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"model": {"num_blocks": 57}, "skip": {"ratio": 0.3}}))
    assert main(["inspect", "--config", str(tmp_path / "FLUX.1-dev"), "--plan", str(plan)]) == 0
    printed = capsys.readouterr().out
    assert "57 blocks" in printed and "DiT-BlockSkip paper" in printed
    assert "0-6 skipped (leading) | 7-18 kept" in printed
    assert "28-37 skipped (trailing)" in printed


def test_bad_plan_is_a_clear_error(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"skip": {"leading": 20}, "model": {"num_blocks": 12}}))
    assert main(["inspect", "--plan", str(plan)]) == 2
    assert "skip.leading: 20 exceeds the model's 12 blocks" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "blockskip.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout and "inspect" in result.stdout
