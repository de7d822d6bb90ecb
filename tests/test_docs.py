"""Every ```python block in docs/ runs as written (so the docs stay true)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPETS = [
    pytest.param(code, id=f"{page.relative_to(DOCS)}:{number}")
    for page in sorted(DOCS.rglob("*.md"))
    for number, code in enumerate(BLOCK.findall(page.read_text()), start=1)
]


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
