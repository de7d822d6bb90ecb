"""Committed files hold no machine paths: model cards, results and docs read the same on every machine."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|Users|tmp|private/var)/[\w.-]+")
COMMITTED_TEXT = ("*.json", "*.jsonl", "*.md", "*.txt", "*.csv")


def committed_text_files():
    for folder in ("blockskip", "benchmarks", "docs", "integrations"):
        for pattern in COMMITTED_TEXT:
            yield from (ROOT / folder).rglob(pattern)
    yield ROOT / "README.md"


def test_committed_files_hold_no_machine_paths():
    found = []
    for path in committed_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {match}" for match in MACHINE_PATH.findall(line)]
    assert found == []


def test_every_torch_load_refuses_pickled_code():
    """`torch.load` runs pickled code unless told not to, and older torch (kohya's pins) is not told by default."""
    call = "torch." + "load("  # spelled in two so that this line is not a call
    calls = []
    for folder in ("blockskip", "benchmarks", "integrations", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if call in line and "weights_only=True" not in line:
                    calls.append(f"{path.relative_to(ROOT)}:{number}")
    assert calls == []
