"""`save_lora` is atomic: a writer killed mid-save leaves the previous LoRA loadable, or a folder
that refuses to load because its plan and weights disagree — never new weights under an old plan."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from blockskip import BlockSkipPlan, BlockSkipPlanError
from blockskip.skipping.lora_files import LORA_WEIGHT_NAME, plan_in_weights

WORKER = Path(__file__).parent / "lora_save_worker.py"


def _save(folder: Path, leading: int, fill: float, stall_at: str = "none") -> None:
    """Run the worker; with a stall point, SIGKILL it there (a crash: no cleanup runs)."""
    process = subprocess.Popen([sys.executable, str(WORKER), str(folder), str(leading), str(fill), stall_at],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if stall_at == "none":
        assert process.wait(timeout=120) == 0 and line == "SAVED"
        return
    assert line == "STALLED"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


def _fills(folder: Path) -> set[float]:
    return {float(tensor.flatten()[0]) for tensor in load_file(folder / LORA_WEIGHT_NAME).values()}


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "lora"
    _save(folder, leading=3, fill=0.25)
    return folder


def test_a_save_records_the_plan_inside_the_weights(saved):
    assert BlockSkipPlan.from_dict(plan_in_weights(saved / LORA_WEIGHT_NAME)) == BlockSkipPlan.load(saved)
    assert sorted(path.name for path in saved.iterdir()) == sorted([LORA_WEIGHT_NAME, "blockskip_plan.json"])


def test_killed_while_writing_the_weights_the_previous_lora_is_intact(saved):
    _save(saved, leading=2, fill=0.5, stall_at="weights")
    assert _fills(saved) == {0.25}
    assert BlockSkipPlan.load(saved).skip.leading == 3
    _save(saved, leading=2, fill=0.5)  # the next save completes and clears the dead one's scratch
    assert _fills(saved) == {0.5} and BlockSkipPlan.load(saved).skip.leading == 2
    assert sorted(path.name for path in saved.iterdir()) == sorted([LORA_WEIGHT_NAME, "blockskip_plan.json"])


def test_killed_between_the_weights_and_the_plan_the_folder_refuses_to_load(saved):
    _save(saved, leading=2, fill=0.5, stall_at="plan")
    assert _fills(saved) == {0.5}  # the new weights are committed; the old plan copy is beside them
    for path in (saved, saved / "blockskip_plan.json"):
        with pytest.raises(BlockSkipPlanError, match="disagree"):
            BlockSkipPlan.load(path)
    _save(saved, leading=2, fill=0.5)  # saving again mends it
    assert BlockSkipPlan.load(saved).skip.leading == 2
