"""Cached residuals: exactness against the full model, agreement with online mode, and refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from blockskip import BlockSkipError, apply_block_skip, lora_target_modules
from blockskip.residuals.bank import BankError, BankReader
from blockskip.training.precompute import precompute_residuals
from tiny_models import build_tiny

PLANS = {
    "FluxTransformer2DModel": {"skip": {"leading": 4, "trailing": 2}},
    "SD3Transformer2DModel": {"skip": {"leading": 1, "trailing": 1}},
    "SanaTransformer2DModel": {"skip": {"leading": 1, "trailing": 1}},
}


def _samples(case, count=5, seed=0):
    return case.bank_samples(count, seed)


def _cached_plan(family, bank, **extra):
    return {**PLANS[family], "residuals": {"mode": "cached", "bank": str(bank)}, **extra}


def _relative_error(value, reference):
    return float((value - reference).norm() / reference.norm())


@pytest.mark.parametrize("family", list(PLANS))
def test_cached_equals_full_model_for_every_key(tmp_path, family):
    case = build_tiny(family)
    samples = _samples(case)
    precompute_residuals(case.model, PLANS[family], samples, tmp_path / "bank", chunk_size=2, progress=False)
    with torch.no_grad():
        references = {key: case.output(case.model(**kwargs)) for key, kwargs in samples}

    handle = apply_block_skip(case.model, _cached_plan(family, tmp_path / "bank"))
    case.model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(case.model)))  # zero LoRA
    for key, kwargs in samples:
        with handle.step([key]):
            output = case.output(case.model(**kwargs))  # gradients on: trailing spans take input + Δ
        assert _relative_error(output.detach(), references[key]) <= 1e-5, key
    # A batch of several entries at once.
    batch = {name: torch.cat([kw[name] for _, kw in samples[:2]]) if torch.is_tensor(value) and value.shape[:1] == (1,)
             else value for name, value in samples[0][1].items()}
    with torch.no_grad(), handle.step(["e0", "e1"]):
        output = case.output(case.model(**batch))
    assert _relative_error(output, torch.cat([references["e0"], references["e1"]])) <= 1e-5


def test_cached_and_online_leading_spans_agree(tmp_path):
    family = "FluxTransformer2DModel"
    plan = {"skip": {"leading": 4}}
    case, online_case = build_tiny(family), build_tiny(family)
    samples = _samples(case, count=3)
    precompute_residuals(case.model, plan, samples, tmp_path / "bank", chunk_size=1, progress=False)
    cached = apply_block_skip(case.model, {**plan, "residuals": {"mode": "cached", "bank": str(tmp_path / "bank")}})
    apply_block_skip(online_case.model, plan)
    for key, kwargs in samples:
        with torch.no_grad():
            with cached.step([key]):
                from_bank = case.output(case.model(**kwargs))
            online = online_case.output(online_case.model(**kwargs))
        assert torch.equal(from_bank, online)  # leading spans store the span output: bit for bit


def test_offload_drop_frees_the_skipped_blocks(tmp_path):
    case = build_tiny("FluxTransformer2DModel")
    samples = _samples(case, count=2)
    precompute_residuals(case.model, PLANS["FluxTransformer2DModel"], samples, tmp_path / "bank", progress=False)
    handle = apply_block_skip(case.model, _cached_plan("FluxTransformer2DModel", tmp_path / "bank", offload="drop"))
    assert handle.originals == {}
    with torch.no_grad(), handle.step(["e1"]):
        case.model(**samples[1][1])
    with pytest.raises(BlockSkipError, match="dropped the skipped blocks"):
        from blockskip import remove_block_skip

        remove_block_skip(case.model)


def test_forward_outside_a_step_is_an_error(tmp_path):
    case = build_tiny("SanaTransformer2DModel")
    samples = _samples(case, count=1)
    precompute_residuals(case.model, PLANS["SanaTransformer2DModel"], samples, tmp_path / "bank", progress=False)
    apply_block_skip(case.model, _cached_plan("SanaTransformer2DModel", tmp_path / "bank"))
    with pytest.raises(BankError, match=r"inside `with handle.step\(keys\):`"):
        case.model(**samples[0][1])


def test_wrong_key_and_wrong_batch_are_errors(tmp_path):
    case = build_tiny("SanaTransformer2DModel")
    samples = _samples(case, count=2)
    precompute_residuals(case.model, PLANS["SanaTransformer2DModel"], samples, tmp_path / "bank", progress=False)
    handle = apply_block_skip(case.model, _cached_plan("SanaTransformer2DModel", tmp_path / "bank"))
    with pytest.raises(BankError, match="entry 'nope' is not in the bank"):
        with handle.step(["nope"]):
            pass
    with pytest.raises(BankError, match="wrong keys for this batch"):
        with handle.step(["e0", "e1"]):
            case.model(**samples[0][1])


def test_verify_catches_a_bank_from_other_inputs(tmp_path):
    case = build_tiny("FluxTransformer2DModel")
    samples = _samples(case, count=2)
    precompute_residuals(case.model, PLANS["FluxTransformer2DModel"], samples, tmp_path / "bank", progress=False)
    handle = apply_block_skip(case.model, _cached_plan("FluxTransformer2DModel", tmp_path / "bank"))
    assert handle.verify(["e0"], samples[0][1]) <= 1e-6
    with pytest.raises(BankError, match="differ from a fresh computation"):
        handle.verify(["e0"], samples[1][1])  # the inputs of another entry


# ----------------------------------------------------------------------------- refusals


@pytest.fixture
def flux_bank(tmp_path):
    case = build_tiny("FluxTransformer2DModel")
    samples = _samples(case, count=4)
    precompute_residuals(
        case.model, PLANS["FluxTransformer2DModel"], samples, tmp_path / "bank",
        schedule="schedule-A", shard_bytes=4096, progress=False,
    )
    return tmp_path / "bank"


def _apply(bank, schedule="schedule-A", plan=None, seed_model=None):
    case = build_tiny("FluxTransformer2DModel")
    if seed_model is not None:
        with torch.no_grad():
            case.model.transformer_blocks[1].attn.to_q.weight.add_(1e-3)
    return apply_block_skip(case.model, plan or _cached_plan("FluxTransformer2DModel", bank), schedule=schedule)


def test_bank_from_other_weights_is_refused(flux_bank):
    with pytest.raises(BankError, match="computed from another model: its weights differs"):
        _apply(flux_bank, seed_model=True)


def test_bank_for_another_plan_is_refused(flux_bank):
    plan = {"skip": {"leading": 3, "trailing": 2}, "residuals": {"mode": "cached", "bank": str(flux_bank)}}
    with pytest.raises(BankError, match=r"holds spans .*but the plan skips transformer_blocks\[0:3\]"):
        _apply(flux_bank, plan=plan)


def test_bank_for_another_schedule_is_refused(flux_bank):
    with pytest.raises(BankError, match="computed for schedule schedule-A"):
        _apply(flux_bank, schedule="schedule-B")
    with pytest.raises(BankError, match="pass that schedule"):
        _apply(flux_bank, schedule=None)
    _apply(flux_bank)  # the right one works


def test_truncated_shard_is_refused(flux_bank):
    shard = sorted(flux_bank.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(BankError, match=f"{shard.name} has .* bytes, the manifest says .*truncated"):
        _apply(flux_bank)


def test_missing_shard_is_refused(flux_bank):
    shard = sorted(flux_bank.glob("shard-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(BankError, match=f"{shard.name} is missing"):
        _apply(flux_bank)


def test_corrupt_shard_is_refused_on_first_use(flux_bank):
    shard = sorted(flux_bank.glob("shard-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    handle = _apply(flux_bank)
    first_key = BankReader(flux_bank, verify_checksums=False).manifest["shards"][0]["keys"][0]
    with pytest.raises(BankError, match="is corrupt"):
        with handle.step([first_key]):
            pass


def test_edited_manifest_is_refused(flux_bank):
    manifest_path = flux_bank / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dtype"] = "bfloat16"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BankError, match="modified after blockskip wrote it"):
        _apply(flux_bank)


def test_incomplete_bank_is_refused(tmp_path):
    case = build_tiny("FluxTransformer2DModel")
    samples = _samples(case, count=3)

    def interrupted():
        yield from samples[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        precompute_residuals(case.model, PLANS["FluxTransformer2DModel"], interrupted(), tmp_path / "bank",
                             chunk_size=1, shard_bytes=1, progress=False)
    with pytest.raises(BankError, match="incomplete bank"):
        apply_block_skip(build_tiny("FluxTransformer2DModel").model, _cached_plan("FluxTransformer2DModel", tmp_path / "bank"))


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    import shutil

    case = build_tiny("FluxTransformer2DModel")
    samples = _samples(case, count=2)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 5))
    with pytest.raises(BankError, match=r"the bank needs about .* GiB more \(2 entries"):
        precompute_residuals(case.model, PLANS["FluxTransformer2DModel"], samples, tmp_path / "bank", progress=False)
    assert not list((tmp_path / "bank").glob("shard-*"))


# ----------------------------------------------------------------------------- resume after a kill

KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from tiny_models import build_tiny
from blockskip.training import precompute as precompute_module
from blockskip.training.precompute import precompute_residuals

case = build_tiny("FluxTransformer2DModel")
samples = []
for index in range(6):
    kwargs = case.inputs(seed=index, batch=1); kwargs.pop("return_dict")
    samples.append((f"e{{index}}", kwargs))
kill_after = int(sys.argv[2])
written = []
original_add = precompute_module.BankWriter.add
def add(self, key, tensors, inputs):
    original_add(self, key, tensors, inputs)
    written.append(key)
    if len(written) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
precompute_module.BankWriter.add = add
precompute_residuals(case.model, {{"skip": {{"leading": 4, "trailing": 2}}}}, samples, sys.argv[1],
                     chunk_size=1, shard_bytes=3000, progress=False)
"""


def _run(script, bank, kill_after):
    return subprocess.run([sys.executable, str(script), str(bank), str(kill_after)], capture_output=True, text=True)


def test_killed_precompute_resumes_to_the_same_bytes(tmp_path):
    script = tmp_path / "precompute.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    assert _run(script, tmp_path / "whole", 0).returncode == 0
    killed = _run(script, tmp_path / "resumed", 4)
    assert killed.returncode != 0  # SIGKILL mid-run
    assert not json.loads((tmp_path / "resumed" / "manifest.json").read_text())["complete"]
    assert _run(script, tmp_path / "resumed", 0).returncode == 0
    whole = sorted(os.listdir(tmp_path / "whole"))
    assert whole == sorted(os.listdir(tmp_path / "resumed"))
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
