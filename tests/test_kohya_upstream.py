"""The kohya adapter on the real sd-scripts: runs when BLOCKSKIP_SD_SCRIPTS points at a checkout.

    BLOCKSKIP_SD_SCRIPTS=/path/to/sd-scripts BLOCKSKIP_SD_SCRIPTS_PYTHON=/path/to/kohya-venv/bin/python \\
        python -m pytest tests/test_kohya_upstream.py

sd-scripts is not a package and pins its own environment (diffusers 0.32.1, transformers 4.54.1,
accelerate 1.6.0), so the runs happen in a subprocess with that environment's interpreter
(`BLOCKSKIP_SD_SCRIPTS_PYTHON`, default: this one), through
`upstream_standins/kohya/real_upstream_driver.py`, which shrinks FLUX/AE/text encoders for the
run. Verified against kohya-ss/sd-scripts 48d368fa557731ad0488c07304dfeba8c07910eb.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = os.environ.get("BLOCKSKIP_SD_SCRIPTS")
PYTHON = os.environ.get("BLOCKSKIP_SD_SCRIPTS_PYTHON", sys.executable)
DRIVER = Path(__file__).parent / "upstream_standins" / "kohya" / "real_upstream_driver.py"
REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(not CHECKOUT, reason="set BLOCKSKIP_SD_SCRIPTS to an sd-scripts checkout")


def _drive(work, mode):
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([PYTHON, str(DRIVER), CHECKOUT, str(work), mode], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_real_bfl_flux_skipped_matches_the_full_model_and_removal_is_bit_identical(tmp_path):
    result = _drive(tmp_path / "exact", "exact")
    assert result.pop("bit_identical_after_removal") is True
    assert all(error <= 1e-5 for error in result.values()), result


def test_real_flux_train_network_trains_kept_blocks_with_less_memory(tmp_path):
    skipped = _drive(tmp_path / "blockskip", "blockskip")
    plain = _drive(tmp_path / "plain", "plain")
    assert skipped["summary"]["steps_at_blockskip_levels"] == 3
    assert skipped["summary"]["kept_blocks"] == ["single_blocks.1", "single_blocks.2"]
    unet = {key.split(".")[0] for key in skipped["keys"] if key.startswith("lora_unet_")}
    assert unet and all(name.startswith(("lora_unet_single_blocks_1_", "lora_unet_single_blocks_2_")) for name in unet)
    assert unet <= {key.split(".")[0] for key in plain["keys"]}  # the same names the full model's LoRA has
    assert skipped["peak_increase_bytes"] < plain["peak_increase_bytes"]
