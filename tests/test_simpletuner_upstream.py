"""The adapter on real SimpleTuner: runs when BLOCKSKIP_SIMPLETUNER names a Python that has `simpletuner` installed.

    BLOCKSKIP_SIMPLETUNER=/work/venvs/simpletuner/bin/python python -m pytest tests/test_simpletuner_upstream.py

SimpleTuner 4.x needs Python >= 3.12 and a ~7 GB install, so it lives in its own virtual
environment (a folder is accepted too: its `bin/python` is used); blockskip must be importable
there (`pip install -e . --no-deps`). Training runs in that interpreter through
`upstream_standins/simpletuner/run_real_simpletuner.py`, which only makes `pin_memory` a no-op
where CUDA is absent. Verified with simpletuner 4.10.1 (transformers 5.22.2, torch 2.14.1, CPU).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import diffusers
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline

from blockskip import BlockSkipPlan

SETTING = os.environ.get("BLOCKSKIP_SIMPLETUNER")
WRAPPER = Path(__file__).parent / "upstream_standins" / "simpletuner" / "run_real_simpletuner.py"
PLAN = {"skip": {"leading": 1, "trailing": 2}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}}
KEPT = {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"}

pytestmark = pytest.mark.skipif(not SETTING, reason="set BLOCKSKIP_SIMPLETUNER to a Python with simpletuner installed")


def _python() -> str:
    path = Path(SETTING)
    return str(path / "bin" / "python") if path.is_dir() else str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("simpletuner_upstream")
    build_tiny_pipeline("flux", root / "model")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):  # 64 x 96 px, non-square
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(images / f"{index}.png")
    backends = [
        {"id": "dog", "type": "local", "instance_data_dir": str(images), "crop": False, "resolution": 64,
         "minimum_image_size": 32, "resolution_type": "pixel", "caption_strategy": "instanceprompt",
         "instance_prompt": "a photo of sks dog", "cache_dir_vae": str(root / "cache" / "vae"), "repeats": 0},
        {"id": "text-embeds", "dataset_type": "text_embeds", "default": True, "type": "local",
         "cache_dir": str(root / "cache" / "text")},
    ]
    (root / "backends.json").write_text(json.dumps(backends))
    (root / "plan.json").write_text(json.dumps(PLAN))
    return root


def options(workspace, output):
    return {
        "--model_family": "flux", "--model_type": "lora", "--pretrained_model_name_or_path": str(workspace / "model"),
        "--output_dir": str(output), "--data_backend_config": str(workspace / "backends.json"),
        "--train_batch_size": "2", "--max_train_steps": "3", "--checkpoint_step_interval": "2",
        "--mixed_precision": "no", "--seed": "42", "--lora_rank": "4", "--optimizer": "torch-adamw",
        "--learning_rate": "1e-4", "--tokenizer_max_length": str(MAX_TOKENS), "--report_to": "none",
        "--validation_disable": "true", "--num_train_epochs": "0", "--lr_scheduler": "constant",
        "--disable_benchmark": "true",
    }


def run(workspace, *arguments):
    command = [_python(), str(WRAPPER), "--blockskip_plan", str(workspace / "plan.json"), *arguments]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=workspace, timeout=900)


def check_output(output, workspace):
    for folder in (output, output / "checkpoint-2"):
        keys = load_file(folder / "pytorch_lora_weights.safetensors").keys()
        assert {".".join(key.split(".")[1:3]) for key in keys} == KEPT
        assert BlockSkipPlan.load(folder) == BlockSkipPlan.from_dict(PLAN)
    pipeline = diffusers.FluxPipeline.from_pretrained(workspace / "model")
    pipeline.load_lora_weights(output)
    loaded = {".".join(name.split(".")[:2]) for name, _ in pipeline.transformer.named_parameters() if "lora_" in name}
    assert loaded == KEPT


def test_real_simpletuner_trains_on_cropped_latents_and_saves_a_kept_blocks_lora(workspace):
    output = workspace / "out"
    result = run(workspace, *[item for pair in options(workspace, output).items() for item in pair])
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert "joint-sequence block layout registered for simpletuner.helpers.models.flux.transformer" in log
    # SimpleTuner's aspect buckets decide the cached size; the crop is always min_size (32 px: 4 latents)
    assert re.search(r"first batch: cached latents \(2, 16, \d+, \d+\) cropped to \(2, 16, 4, 4\)", log)
    assert "done: 3 batches on blockskip's crops and noise levels, 2 plan file(s) written" in log
    check_output(output, workspace)


def test_real_simpletuner_from_a_config_file(workspace):
    output = workspace / "from_file"
    config = {key.lstrip("-"): value for key, value in options(workspace, output).items()}
    (workspace / "config.json").write_text(json.dumps(config))
    result = run(workspace, "--blockskip_config", str(workspace / "config.json"))
    assert result.returncode == 0, result.stderr[-4000:]
    check_output(output, workspace)


def test_real_simpletuner_refuses_tread_before_loading(workspace):
    arguments = [item for pair in options(workspace, workspace / "refused").items() for item in pair]
    (workspace / "tread.json").write_text(json.dumps({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1,
                                                                  "end_layer_idx": -2}]}))
    result = run(workspace, *arguments, "--tread_config", str(workspace / "tread.json"))
    assert result.returncode == 2
    assert "blockskip: error: --tread_config" in result.stderr
    assert "Loading diffusion model" not in result.stdout + result.stderr
