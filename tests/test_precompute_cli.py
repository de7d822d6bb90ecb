"""`blockskip precompute` on tiny pipelines saved offline, and cached training fed by the same inputs."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from torch.utils.data import DataLoader

from blockskip import BlockSkipPlan, DynamicPatchCollator, TrainingSchedule, apply_block_skip, lora_target_modules
from blockskip.cli import main
from blockskip.crops.image_folder import ImageFolder
from blockskip.residuals.bank import BankReader, read_manifest
from blockskip.training.pipeline_inputs import PipelineInputs, load_pipeline
from tiny_image_folders import CAPTIONS, write_images
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline

STEPS, BATCH = 3, 2
# Image sizes (H, W) include one below max_size and non-square ones; skips cross the FLUX
# double/single boundary (3 = 2 double + 1 single).
SETUPS = {
    "flux": {"sizes": [(64, 80), (80, 64), (48, 64), (64, 64)], "patches": (32, 64), "skip": (3, 1)},
    "sd3": {"sizes": [(64, 80), (80, 64), (48, 64), (64, 64)], "patches": (32, 64), "skip": (2, 1)},
    "sana": {"sizes": [(128, 160), (160, 128), (96, 128), (128, 128)], "patches": (64, 128), "skip": (2, 1)},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Per family, once per module: a pipeline folder, an image folder, a plan, and the CLI's first run."""
    made = {}

    def get(family):
        if family not in made:
            root = tmp_path_factory.mktemp(family)
            setup = SETUPS[family]
            build_tiny_pipeline(family, root / "pipeline")
            write_images(root / "images", setup["sizes"])
            plan = {
                "skip": {"leading": setup["skip"][0], "trailing": setup["skip"][1]},
                "patches": {"min_size": setup["patches"][0], "max_size": setup["patches"][1]},
                "residuals": {"mode": "cached", "bank": str(root / "bank")},
            }
            (root / "plan.json").write_text(json.dumps(plan))
            code, out, err = run_cli(root)
            assert code == 0, err
            made[family] = (root, out)
        return made[family]

    return get


def run_cli(root: Path, *extra: str, plan: str = "plan.json"):
    out, err = io.StringIO(), io.StringIO()
    args = ["precompute", "--pipeline", str(root / "pipeline"), "--images", str(root / "images"),
            "--plan", str(root / plan), "--steps", str(STEPS), "--batch-size", str(BATCH),
            "--max-sequence-length", str(MAX_TOKENS), "--chunk-size", "4", "--no-progress", *extra]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("family", list(SETUPS))
def test_bank_from_the_cli_gives_the_full_model_output_in_cached_training(workspace, family):
    root, out = workspace(family)
    bank = root / "bank"
    manifest = read_manifest(bank)
    assert manifest["complete"] and manifest["entries"] == STEPS * BATCH
    assert f"{STEPS * BATCH} entries" in out

    # Training rebuilds everything from the files the command left beside the bank.
    schedule = TrainingSchedule.from_dict(json.loads((bank / "schedule.json").read_text()))
    assert f"schedule fingerprint: {schedule.fingerprint()}" in out
    recorded = json.loads((bank / "precompute.json").read_text())
    pipeline = load_pipeline(root / "pipeline", recorded["dtype"])
    inputs = PipelineInputs(pipeline, max_sequence_length=recorded["inputs"]["max_sequence_length"])
    collator = DynamicPatchCollator(schedule.patches, convention="sigma")
    loader = DataLoader(schedule.dataset(ImageFolder(root / "images")), batch_size=schedule.batch_size,
                        shuffle=False, collate_fn=collator)
    batches = list(loader)
    model = pipeline.transformer
    with torch.no_grad():
        references = [model(**inputs.forward_kwargs(batch, schedule.step(step))[0], return_dict=False)[0]
                      for step, batch in enumerate(batches)]

    handle = apply_block_skip(model, BlockSkipPlan.load(root / "plan.json"), schedule=schedule)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model, ["to_q", "to_k", "to_v"])))  # zero LoRA
    for step, batch in enumerate(batches):
        kwargs, target = inputs.forward_kwargs(batch, schedule.step(step))
        upcoming = schedule.keys(step + 1) if step + 1 < len(schedule) else None
        with handle.step(batch["blockskip_key"], next_keys=upcoming):
            output = model(**kwargs, return_dict=False)[0]
        error = float((output.detach() - references[step]).norm() / references[step].norm())
        assert error <= 1e-5, (step, error)
        loss = torch.nn.functional.mse_loss(output.float(), target)
        loss.backward()
        assert output.shape == target.shape and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    assert len(inputs.prompts) == len(CAPTIONS)  # each caption encoded once
    scale = 1.0 if family == "flux" else 1000.0  # FLUX takes sigma (the script's t / 1000), SD3 and Sana t
    assert torch.allclose(kwargs["timestep"], batch["noise_level"] * scale)


def test_rerunning_on_a_complete_bank_computes_nothing(workspace):
    root, _ = workspace("flux")
    bank = root / "bank"
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in bank.iterdir()}
    code, out, err = run_cli(root)
    assert code == 0, err
    assert "already complete" in out and f"{STEPS * BATCH} entries" in out and "wrote" not in out
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in bank.iterdir()} == before


def test_a_bank_for_another_schedule_is_refused(workspace):
    root, _ = workspace("flux")
    code, _, err = run_cli(root, "--seed", "1")
    assert code == 2
    assert "holds a bank for another schedule" in err and "use a new folder" in err
    assert TrainingSchedule.from_dict(json.loads((root / "bank" / "schedule.json").read_text())).seed == 0


def test_an_image_without_a_caption_is_a_clear_error(tmp_path):
    write_images(tmp_path / "images", [(32, 32)] * 3, captions="txt")
    (tmp_path / "images" / "img1.txt").unlink()
    (tmp_path / "plan.json").write_text(json.dumps({"residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}}))
    code, _, err = run_cli(tmp_path)  # fails before the (missing) pipeline is read
    assert code == 2
    assert "img1.png has no caption (no img1.txt beside it)" in err
    assert not (tmp_path / "bank").exists()


def test_an_unreadable_image_is_named(tmp_path):
    write_images(tmp_path / "images", [(32, 32)] * 2, captions="txt")
    (tmp_path / "images" / "img0.png").write_bytes(b"not a png")
    (tmp_path / "plan.json").write_text(json.dumps({"residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}}))
    code, _, err = run_cli(tmp_path)
    assert code == 2 and "cannot read image file" in err and "img0.png" in err


def test_an_interrupted_run_resumes_where_it_stopped(workspace, monkeypatch):
    root, _ = workspace("flux")
    plan = json.loads((root / "plan.json").read_text())
    plan["residuals"]["bank"] = str(root / "bank-resumed")
    (root / "plan-resumed.json").write_text(json.dumps(plan))
    bank_inputs = PipelineInputs.bank_inputs

    def interrupted(self, *args, **kwargs):
        for position, item in enumerate(bank_inputs(self, *args, **kwargs)):
            if position == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(PipelineInputs, "bank_inputs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cli(root, "--shard-mib", "0.001", "--chunk-size", "1", plan="plan-resumed.json")  # a shard per entry
    assert not read_manifest(root / "bank-resumed")["complete"]
    monkeypatch.setattr(PipelineInputs, "bank_inputs", bank_inputs)
    code, out, err = run_cli(root, "--shard-mib", "0.001", plan="plan-resumed.json")
    assert code == 0, err
    assert f"{STEPS * BATCH} entries ({STEPS * BATCH - 3} computed now, 3 were already there)" in out
    resumed, original = read_manifest(root / "bank-resumed"), read_manifest(root / "bank")
    assert resumed["complete"] and resumed["schedule"] == original["schedule"] and resumed["entries"] == STEPS * BATCH
    resumed, original = BankReader(root / "bank-resumed"), BankReader(root / "bank")
    for key in original.keys:
        for name, tensor in original.entry(key).items():
            assert torch.allclose(resumed.entry(key)[name], tensor, rtol=1e-5, atol=1e-6), (key, name)


def test_bank_folder_must_agree_with_the_plan(tmp_path):
    write_images(tmp_path / "images", [(32, 32)], captions="txt")
    (tmp_path / "plan.json").write_text(json.dumps({"residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}}))
    code, _, err = run_cli(tmp_path, "--bank", str(tmp_path / "other"))
    assert code == 2 and "is not the plan's residuals.bank" in err
    (tmp_path / "plan.json").write_text(json.dumps({}))
    code, _, err = run_cli(tmp_path)
    assert code == 2 and "no bank folder: pass --bank DIR" in err
