"""The adapter on the real upstream scripts: runs when BLOCKSKIP_DIFFUSERS_EXAMPLES points at a diffusers checkout.

    BLOCKSKIP_DIFFUSERS_EXAMPLES=/path/to/diffusers python -m pytest tests/test_diffusers_upstream.py

The scripts are not in any package, so CI skips this. They import torchvision, whose PyPI wheel
does not load beside the CPU torch wheel; when it cannot be imported, the subprocess runs through
`upstream_standins/run_with_torchvision_shim.py` with a test-only shim of the few image
transforms the datasets call at init. Verified here against huggingface/diffusers 58eb52c0803ea9af3abec60841c2a093bdf1f951.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tiny_pipelines import MAX_TOKENS, build_tiny_pipeline

from blockskip import BlockSkipPlan

CHECKOUT = os.environ.get("BLOCKSKIP_DIFFUSERS_EXAMPLES")
SHIM = Path(__file__).parent / "upstream_standins" / "run_with_torchvision_shim.py"
REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(not CHECKOUT, reason="set BLOCKSKIP_DIFFUSERS_EXAMPLES to a diffusers checkout")

# Sana trains with batch 1: at 58eb52c its script broadcasts the instance prompt's embeddings over
# the batch but not their attention mask, so --train_batch_size 2 fails without blockskip too.
CASES = {
    # family: (plan, --resolution, kept blocks, --train_batch_size)
    "flux": (
        {"skip": {"leading": 1, "trailing": 2}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}},
        64,
        {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"},
        2,
    ),
    "sd3": (
        {"skip": {"leading": 1, "trailing": 1}, "patches": {"min_size": 32, "max_size": 64, "multiple_of": 16}},
        64,
        {"transformer_blocks.1", "transformer_blocks.2", "transformer_blocks.3"},
        2,
    ),
    "sana": (
        {"skip": {"leading": 1, "trailing": 1}, "patches": {"min_size": 64, "max_size": 128, "multiple_of": 32}},
        128,
        {"transformer_blocks.1", "transformer_blocks.2", "transformer_blocks.3"},
        1,
    ),
}


def _widen_clip_positions(folder: Path) -> None:
    """The scripts tokenize CLIP prompts to 77 tokens, beyond the tiny encoders' 16 positions: rebuild them with 77."""
    import torch
    import transformers

    for name in ("text_encoder", "text_encoder_2"):
        config_file = folder / name / "config.json"
        if not config_file.exists():
            continue
        config = json.loads(config_file.read_text())
        if not config["architectures"][0].startswith("CLIPTextModel"):
            continue
        model_class = getattr(transformers, config["architectures"][0])
        model_config = model_class.config_class.from_pretrained(folder / name)
        model_config.max_position_embeddings = 77
        torch.manual_seed(0)
        model_class(model_config).save_pretrained(folder / name)


def _python():
    """The interpreter, wrapped with the torchvision shim when the real torchvision cannot be imported."""
    if subprocess.run([sys.executable, "-c", "import torchvision.transforms"], capture_output=True).returncode == 0:
        return [sys.executable]
    return [sys.executable, str(SHIM)]


ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("family, prior", [(family, False) for family in CASES] + [("flux", True)])
def test_real_script_trains_and_saves_a_kept_blocks_lora(tmp_path, family, prior):
    plan, resolution, kept, batch_size = CASES[family]
    script = Path(CHECKOUT) / "examples" / "dreambooth" / f"train_dreambooth_lora_{family}.py"
    folder = build_tiny_pipeline(family, tmp_path / "model")
    _widen_clip_positions(folder)
    rng = np.random.default_rng(0)
    images, class_images = tmp_path / "images", tmp_path / "class_images"
    for directory in (images, class_images):
        directory.mkdir()
        for index in range(3):
            pixels = rng.integers(0, 256, (resolution + 16, resolution + 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / f"{index}.png")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    output = tmp_path / "out"
    command = [
        *_python(), "-m", "blockskip.integrations.diffusers", str(script),
        "--blockskip_plan", str(tmp_path / "plan.json"),
        "--pretrained_model_name_or_path", str(folder), "--instance_data_dir", str(images),
        "--instance_prompt", "a photo of sks dog", "--resolution", str(resolution),
        "--max_sequence_length", str(MAX_TOKENS), "--train_batch_size", str(batch_size), "--max_train_steps", "2",
        "--checkpointing_steps", "1", "--mixed_precision", "no", "--seed", "0", "--output_dir", str(output),
    ]
    if prior:  # class images exist already: the script generates none
        command += ["--with_prior_preservation", "--class_data_dir", str(class_images), "--class_prompt", "a dog",
                    "--num_class_images", "3"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "dynamic patches" in result.stderr
    for folder_ in (output, output / "checkpoint-2"):
        keys = load_file(folder_ / "pytorch_lora_weights.safetensors").keys()
        assert {".".join(key.split(".")[1:3]) for key in keys} == kept
        assert BlockSkipPlan.load(folder_) == BlockSkipPlan.from_dict(plan)

    refused = subprocess.run(command + ["--cache_latents"], capture_output=True, text=True, env=ENVIRONMENT)
    assert refused.returncode == 2 and "--cache_latents cannot work with dynamic patches" in refused.stderr
