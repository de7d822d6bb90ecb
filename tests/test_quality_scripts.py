"""The quality benchmark's scripts: pretraining resumes exactly, the benchmark resumes and reports."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent.parent / "benchmarks" / "quality"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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


def test_multi_resolution_pretraining_resumes_to_the_same_weights(tmp_path):
    pretrain = _load("pretrain")
    common = ["--batch-size", "2", "--checkpoint-every", "1", "--preview-every", "1000", "--threads", "1",
              "--sides", "16,24", "--crop-fraction", "0.5", "--config", '{"num_single_layers": 2}']
    assert pretrain.main(["--out", str(tmp_path / "straight"), "--images", "8", *common]) == 0
    assert pretrain.main(["--out", str(tmp_path / "resumed"), "--images", "4", *common]) == 0
    assert pretrain.main(["--out", str(tmp_path / "resumed"), "--images", "8", *common]) == 0
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert not any(name.startswith("single_transformer_blocks.2.") for name in straight["ema"])
    for name, tensor in straight["ema"].items():
        assert torch.equal(tensor, resumed["ema"][name]), name


def test_each_step_draws_its_side_and_crop_from_its_own_seed():
    pretrain = _load("pretrain")
    from blockskip.shapes import ShapesTextEncoder

    encoder = ShapesTextEncoder()
    views = [pretrain.step_view(torch.Generator().manual_seed(step), [32, 64], [3, 1], 0.5) for step in range(400)]
    share_32 = sum(side == 32 for side, _ in views) / len(views)
    crops = [(side, rendered) for side, rendered in views if rendered != side]
    assert 0.68 < share_32 < 0.82  # 3:1, four standard errors either side
    assert 0.42 < len(crops) / len(views) < 0.58
    assert all(side < rendered <= 2 * side and rendered % 4 == 0 for side, rendered in crops)
    tokens, ids, *_ = pretrain.training_batch(7, 2, encoder, 0, [16, 40], None, 1.0)
    again, _, *_ = pretrain.training_batch(7, 2, encoder, 0, [16, 40], None, 1.0)
    assert torch.equal(tokens, again) and tokens.shape[1] == ids.shape[0] in (16, 100)
    # One side and no crops draw nothing extra: the first pretraining run's batches are unchanged.
    generator = torch.Generator().manual_seed(3)
    assert pretrain.step_view(generator, [32], None, 0.0) == (32, 32)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(3).get_state())


def test_object_weights_set_how_many_objects_scenes_get():
    pretrain = _load("pretrain")
    generator = torch.Generator().manual_seed(5)
    counts = [pretrain.scene_objects(generator, [0.6, 0.25, 0.15]) for _ in range(2000)]
    assert 0.57 < counts.count(1) / 2000 < 0.63 and 0.12 < counts.count(3) / 2000 < 0.18  # ~3 standard errors
    untouched = torch.Generator().manual_seed(5)
    assert pretrain.scene_objects(untouched, None) is None  # the default draws nothing: earlier runs' batches stay
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(5).get_state())
    with pytest.raises(SystemExit):
        pretrain.main(["--out", "unused", "--object-weights", "1,1"])


def test_silhouette_weights_count_outlines_more_and_leave_the_images_alone():
    pretrain = _load("pretrain")
    from blockskip.shapes import ShapesTextEncoder, unpack

    encoder = ShapesTextEncoder()
    plain = pretrain.training_batch(11, 3, encoder, 0, [32, 48], None, 1.0)
    weighted = pretrain.training_batch(11, 3, encoder, 0, [32, 48], None, 1.0, silhouette_weight=4.0, sigma_shift=3.0)
    for same in (0, 1, 2, 3, 5):  # tokens, ids, text, pooled, noise: the same draws, crops included
        assert torch.equal(plain[same], weighted[same])
    assert plain[6].shape == () and float(plain[6]) == 1.0
    weights, sigma = weighted[6], weighted[4]
    assert weights.shape == plain[0].shape and torch.isclose(weights.mean(), torch.tensor(1.0))
    side = int(plain[1].shape[0] ** 0.5) * 4
    pixels = unpack(weights, side, side)[:, 0]
    assert pixels.max() / pixels.min() == pytest.approx(5.0, rel=1e-5)  # outline pixels count 1 + 4 times
    assert torch.allclose(sigma, 3 * plain[4] / (1 + 2 * plain[4])) and bool((sigma >= plain[4]).all())


def test_a_run_continues_from_exported_weights_and_the_card_adds_up(tmp_path, monkeypatch):
    pretrain = _load("pretrain")
    exported = tmp_path / "package" / "shapes-dit.safetensors"
    monkeypatch.setattr(pretrain, "WEIGHTS_FILE", exported)
    small = ["--batch-size", "2", "--threads", "1", "--preview-every", "1000", "--config", '{"num_single_layers": 1}']
    assert pretrain.main(["--out", str(tmp_path / "first"), "--images", "4", *small]) == 0
    assert pretrain.main(["--out", str(tmp_path / "first"), "--export", *small]) == 0
    first_weights = {name: tensor.float() for name, tensor in load_file(str(exported)).items()}

    second = ["--out", str(tmp_path / "second"), "--init-from", str(exported), "--seed", "1", *small]
    assert pretrain.main([*second, "--images", "0"]) == 0  # starts exactly where the export left off
    start = torch.load(tmp_path / "second" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(start["model"][name], first_weights[name]) for name in first_weights)
    assert pretrain.main([*second, "--images", "6"]) == 0
    assert pretrain.main([*second, "--export"]) == 0
    card = json.loads(exported.with_suffix(".json").read_text())
    assert (card["steps"], card["images_seen"]) == (2 + 3, 4 + 6)
    assert [run["images_seen"] for run in card["runs"]] == [4, 6]
    assert "--init-from" in card["runs"][1]["command"] and "--init-from" not in card["runs"][0]["command"]


def test_continuing_from_weights_of_another_architecture_is_refused(tmp_path, monkeypatch, capsys):
    pretrain = _load("pretrain")
    exported = tmp_path / "shapes-dit.safetensors"
    monkeypatch.setattr(pretrain, "WEIGHTS_FILE", exported)
    small = ["--batch-size", "2", "--threads", "1", "--config", '{"num_single_layers": 1}']
    assert pretrain.main(["--out", str(tmp_path / "first"), "--images", "2", *small]) == 0
    assert pretrain.main(["--out", str(tmp_path / "first"), "--export", *small]) == 0
    with pytest.raises(SystemExit) as stop:
        pretrain.main(["--out", str(tmp_path / "other"), "--init-from", str(exported), "--images", "2", "--batch-size", "2"])
    assert stop.value.code == 2
    assert "was trained with config" in capsys.readouterr().err and not (tmp_path / "other" / "checkpoint.pt").exists()


def test_benchmark_runs_resumes_and_reports(tmp_path, capsys):
    personalize = _load("personalize")
    run = ["--out", str(tmp_path / "run"), "--subjects", "1", "--steps", "2", "--rows", "full LoRA", "skip 40% online",
           "--no-selection", "--samples-per-prompt", "1", "--sample-steps", "2", "--side", "32"]
    assert personalize.main(run) == 0
    results = tmp_path / "run" / "results_0_1.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["row"] for r in records] == ["full LoRA @32", "skip 40% online"]
    assert records[1]["memory_bytes"] < records[0]["memory_bytes"] and records[1]["reload_error"] < 1e-5
    assert personalize.main(run) == 0  # resumed: nothing left to do
    assert len(results.read_text().splitlines()) == 2
    report = tmp_path / "docs" / "quality_results.md"
    shutil.copy(SCRIPTS / "results" / "selection_profile.json", tmp_path / "run")  # a measured profile, so the report plots it
    assert personalize.main([*run[:2], "--report", str(report), "--grid-subjects", "1"]) == 0
    table = report.read_text()
    assert "| full LoRA @32 |" in table and "1.00× | 1.00× |" in table and "| skip 40% online |" in table
    assert (tmp_path / "docs" / "images" / "quality_skip_40__online.png").exists()
    for chart in ("quality_scores.png", "quality_memory_vs_similarity.png", "quality_selection_profile.png"):
        assert (tmp_path / "docs" / "images" / chart).stat().st_size > 1000


def test_benchmark_at_64_px_names_rows_by_training_side_and_will_not_mix_sides(tmp_path):
    personalize = _load("personalize")
    names = [personalize.row_name(recipe) for recipe in personalize.rows(None, side=64)]
    assert names[:4] == ["pretrained, no LoRA", "full LoRA @64", "plain resize @32", "dynamic patches @32"]
    assert "skip 50% online @64" in names and not any("@16" in name for name in names)
    run = ["--out", str(tmp_path / "run"), "--subjects", "1", "--steps", "1", "--rows", "dynamic patches", "--no-selection",
           "--samples-per-prompt", "1", "--sample-steps", "1", "--side", "64"]
    assert personalize.main(run) == 0
    record = json.loads((tmp_path / "run" / "results_0_1.jsonl").read_text())
    assert (record["row"], record["side"]) == ("dynamic patches @32", 64)
    samples = torch.load(next((tmp_path / "run" / "samples").iterdir()), weights_only=True)
    assert samples.shape[-2:] == (64, 64)
    with pytest.raises(SystemExit, match="holds results at \\[64\\] px; this run is at 32 px"):
        personalize.main([*run[:-1], "32"])
    assert len((tmp_path / "run" / "results_0_1.jsonl").read_text().splitlines()) == 1


def test_dynamic_benchmark_trains_a_row_resumes_and_reports(tmp_path):
    dynamic = _load("dynamic")
    common = ["--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2", "--prompts", "2", "--cost-prompts", "1",
              "--rows", "1,2", "--threads", "1"]
    assert dynamic.main(common) == 0
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    lora, result = (json.loads(line) for line in lines)
    assert len(lines) == 2 and (lora["row"], result["row"]) == ("LoRA, no gates", "DyDiT λ=0.7 + LoRA") and result["steps"] == 3
    assert 0 < result["flops_ratio"] < 2 and len(result["spent_by_step"]) == 20 and 0 <= result["shape"] <= 1
    assert dynamic.main([*common, "--report", str(tmp_path / "docs" / "dynamic.md")]) == 0  # resumes: nothing retrained
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 2
    table = (tmp_path / "docs" / "dynamic.md").read_text()
    gated = next(line for line in table.splitlines() if line.startswith("| DyDiT λ=0.7 + LoRA |")).split(" | ")
    assert float(gated[8]) == pytest.approx(result["flops_ratio"] / lora["flops_ratio"], abs=0.006)  # FLOPs vs LoRA
    assert "| DyDiT λ=0.7 + LoRA |" in table and (tmp_path / "docs" / "images" / "dynamic_samples.png").exists()


def test_targets_are_checked_from_paired_records_and_misses_are_reported():
    targets = _load("targets")

    def row(similarity, accuracy, spread=0.0):
        return [{"subject": f"s{i}", "seed": 0, "subject_similarity": similarity + spread * (i % 2), "subject_accuracy": accuracy}
                for i in range(4)]

    by_row = {
        "pretrained, no LoRA": row(0.80, 0.0),
        "full LoRA @64": row(0.90, 0.5),
        "plain resize @32": row(0.85, 0.2),
        "dynamic patches @32": row(0.85, 0.2, spread=0.01),  # ahead by 0.005 ± 0.003: more than one s.e.
        "skip 30% cached": row(0.88, 0.45),
        "skip 30% online": row(0.86, 0.30),
        "skip 50% none": row(0.84, 0.0),
        "skip first 6 only (50%)": row(0.86, 0.1),
        "skip last 6 only (50%)": row(0.87, 0.1),
        "selection tool 50% (3+3)": row(0.865, 0.1),
    }
    lines = targets.target_checks(by_row, side=64)
    assert lines[0] == "- ✗ full LoRA @64: subject accuracy 0.500 (target ≥ 0.7)"
    assert [line[2] for line in lines if "skip 30% cached" in line] == ["✓", "✓"]
    assert [line[2] for line in lines if "skip 30% online" in line] == ["✗", "✗"]  # 0.956× similarity, 0.6× accuracy
    assert "✓ dynamic patches beat plain resize @32" in "\n".join(lines)
    assert "✗ naive skip 50%" in "\n".join(lines)  # gains 40% of full LoRA's similarity: not near
    selection = [line for line in lines if line.startswith(("- ✓ selection", "- ✗ selection"))]
    assert [line[2] for line in selection] == ["✓", "✗"]  # ahead of first-only, behind last-only

    by_row["selection tool 50% (3+3)"] = row(0.868, 0.1, spread=0.003)  # behind last-only by 0.0005 ± 0.0009
    tie = [line for line in targets.target_checks(by_row, side=64) if "vs skip last 6 only" in line]
    assert tie[0].startswith("- ≈ selection tool") and "tied within one s.e." in tie[0]


def test_forward_only_benchmark_scores_at_equal_steps_equal_time_and_the_end(tmp_path):
    forward_only = _load("forward_only")
    run = ["--out", str(tmp_path / "run"), "--subjects", "1", "--steps", "2", "--zo-steps", "4", "--samples-per-prompt", "1",
           "--sample-steps", "1", "--side", "32", "--rows", "BP LoRA", "ZO LoRA", "--threads", "1"]
    assert forward_only.main(run) == 0
    results = tmp_path / "run" / "results_0_1.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["row"], r["checkpoint"]) for r in records][:2] == [("BP LoRA", "end"), ("ZO LoRA", "equal steps")]
    zo = [r for r in records if r["row"] == "ZO LoRA"]
    assert {r["checkpoint"].replace(" (ran out)", "") for r in zo} == {"equal steps", "equal time", "end"}
    assert zo[0]["step"] == 2 and zo[-1]["step"] == 4 and zo[-1]["steps_by_kind"] == {"bp": 0, "zo": 4}
    assert forward_only.main(run) == 0 and len(results.read_text().splitlines()) == len(records)  # resumed: nothing to do
    report = tmp_path / "table.md"
    assert forward_only.main([*run[:2], "--side", "32", "--report", str(report)]) == 0
    table = report.read_text()
    assert "| BP LoRA | end | 1 |" in table and "| ZO LoRA | equal time | 1 |" in table and "1.00× | 2 |" in table
