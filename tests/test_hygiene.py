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
