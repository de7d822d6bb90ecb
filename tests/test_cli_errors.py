"""Every subcommand turns a bad path, a bad number, a missing argument or an unknown model into one
line on stderr and a non-zero exit — never a traceback, and before any expensive work starts."""

import json

import pytest

from blockskip.cli import main

MISSING = "no/such/path"


def _cases(tmp):
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"skip": {"ratio": 0.3}}))
    folder = tmp / "folder"
    folder.mkdir()
    deep, latin1, repeated = folder / "deep.json", folder / "latin1.json", folder / "repeated.json"
    deep.write_text('{"skip": ' + "[" * 100_000 + "]" * 100_000 + "}")
    latin1.write_bytes('{"model": {"class": "Flüx"}}'.encode("latin-1"))
    repeated.write_text('{"skip": {"leading": 1, "leading": 9}}')
    return {
        # bad paths
        "demo --plan missing": ["demo", "--plan", MISSING],
        "inspect --config missing": ["inspect", "--config", MISSING],
        "inspect --plan a folder": ["inspect", "--plan", str(folder)],
        "precompute --pipeline missing": ["precompute", "--pipeline", MISSING, "--images", str(folder), "--plan", str(plan), "--steps", "2", "--batch-size", "1"],
        "precompute --plan missing": ["precompute", "--pipeline", str(folder), "--images", str(folder), "--plan", MISSING, "--steps", "2", "--batch-size", "1"],
        "select --pipeline missing": ["select", "--pipeline", MISSING, "--lora", MISSING, "--prompts", MISSING, "--ratio", "0.3", "-o", str(tmp / "o.json")],
        "select --from-profile missing": ["select", "--from-profile", MISSING, "--ratio", "0.3", "-o", str(tmp / "o.json")],
        "estimate --plan missing": ["estimate", "--model", "flux.1-dev", "--plan", MISSING],
        "estimate --model missing config": ["estimate", "--model", f"{MISSING}/config.json"],
        "plan -o into a missing folder's file": ["plan", "--model", "flux.1-dev", "--budget-gib", "8", "-o", str(plan / "x.json")],
        "estimate --plan nested too deep": ["estimate", "--model", "flux.1-dev", "--plan", str(deep)],
        "estimate --plan not UTF-8": ["estimate", "--model", "flux.1-dev", "--plan", str(latin1)],
        "estimate --plan with a repeated key": ["estimate", "--model", "flux.1-dev", "--plan", str(repeated)],
        # bad numbers
        "demo --steps 0": ["demo", "--steps", "0"],
        "demo --steps abc": ["demo", "--steps", "abc"],
        "demo --rank -1": ["demo", "--rank", "-1"],
        "precompute --steps 0": ["precompute", "--pipeline", str(folder), "--images", str(folder), "--plan", str(plan), "--steps", "0", "--batch-size", "1"],
        "precompute --batch-size 0": ["precompute", "--pipeline", str(folder), "--images", str(folder), "--plan", str(plan), "--steps", "2", "--batch-size", "0"],
        "select --ratio 1.5": ["select", "--from-profile", MISSING, "--ratio", "1.5", "-o", str(tmp / "o.json")],
        "estimate --skip-ratio 2": ["estimate", "--model", "flux.1-dev", "--skip-ratio", "2"],
        "estimate --skip-ratio nan": ["estimate", "--model", "flux.1-dev", "--skip-ratio", "nan"],
        "estimate --resolution 0": ["estimate", "--model", "flux.1-dev", "--resolution", "0"],
        "estimate --resolution 100": ["estimate", "--model", "flux.1-dev", "--resolution", "100"],
        "estimate --batch-size 0": ["estimate", "--model", "flux.1-dev", "--batch-size", "0"],
        "estimate --budgets 8,x": ["estimate", "--model", "flux.1-dev", "--compare", "--gpu", "rtx4090-24gb", "--budgets", "8,x"],
        "plan --budget-gib -1": ["plan", "--model", "flux.1-dev", "--budget-gib", "-1"],
        "plan --budget-gib inf": ["plan", "--model", "flux.1-dev", "--budget-gib", "inf"],
        "plan --max-skip-ratio 1.5": ["plan", "--model", "flux.1-dev", "--budget-gib", "8", "--max-skip-ratio", "1.5"],
        "plan --resolutions 512,abc": ["plan", "--model", "flux.1-dev", "--budget-gib", "8", "--resolutions", "512,abc"],
        "plan --reserve-gib -1": ["plan", "--model", "flux.1-dev", "--budget-gib", "8", "--reserve-gib", "-1"],
        # missing arguments
        "no subcommand": [],
        "estimate without --model": ["estimate"],
        "plan without a budget": ["plan", "--model", "flux.1-dev"],
        "precompute without --steps": ["precompute", "--pipeline", str(folder), "--images", str(folder), "--plan", str(plan), "--batch-size", "1"],
        "select without --ratio": ["select", "--from-profile", MISSING, "-o", str(tmp / "o.json")],
        "estimate --compare without --gpu": ["estimate", "--model", "flux.1-dev", "--compare"],
        # unknown names
        "estimate --model unknown": ["estimate", "--model", "flux.9-ultra"],
        "plan --model unknown": ["plan", "--model", "flux.9-ultra", "--budget-gib", "8"],
        "plan --gpu unknown": ["plan", "--model", "flux.1-dev", "--gpu", "rtx9090"],
        "unknown subcommand": ["train"],
    }


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as scratch:
            names = list(_cases(Path(scratch)))
        metafunc.parametrize("case", names)


def test_a_bad_invocation_is_one_line_and_a_non_zero_exit(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _cases(tmp_path)[case]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    captured = capsys.readouterr()
    assert code not in (0, None)
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and lines[0].startswith("blockskip")
    assert not [path for path in tmp_path.iterdir() if path.name not in {"plan.json", "folder"}]  # nothing written
