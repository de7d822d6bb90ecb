"""The adapters' own `--blockskip_*` flags, taken out of a command line that is otherwise the trainer's.

Every adapter reads `--blockskip_plan PLAN` (required), `--blockskip_patches {dynamic,off}` and
`--blockskip_quiet`, anywhere on the line, as `--name value` or `--name=value`; an adapter may
know more flags that take a value. Everything else stays, in order, for the trainer. The
adapters that run a script (diffusers, kohya) want the script's path first: `split_script_arguments`.

Example:
    >>> values, rest = take_flags(["--blockskip_plan=p.json", "--rank", "16", "--blockskip_quiet"],
    ...                           ("plan", "patches"), ValueError)
    >>> values, rest, plan_and_patches(values, ValueError)
    ({'plan': 'p.json', 'quiet': True}, ['--rank', '16'], ('p.json', True, True))
    >>> split_script_arguments(["train.py", "--blockskip_plan", "p.json", "--blockskip_patches", "off"],
    ...                        ValueError, "name the script first")
    AdapterArguments(script='train.py', plan='p.json', dynamic_patches=False, quiet=False, script_args=[], ralu=None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "--blockskip_"


@dataclass
class AdapterArguments:
    script: str
    plan: str
    dynamic_patches: bool = True
    quiet: bool = False
    script_args: list[str] = field(default_factory=list)
    ralu: str | None = None  # --blockskip_ralu: a RALU preset or settings file for validation images

    def run_with(self, run: Callable[..., Any]) -> Any:
        """`run(script, script_args, plan, dynamic_patches=..., verbose=...[, ralu=...])`: an adapter's `run_*`."""
        verbose = not self.quiet
        extra = {"ralu": self.ralu} if self.ralu is not None else {}
        return run(self.script, self.script_args, self.plan, dynamic_patches=self.dynamic_patches, verbose=verbose, **extra)


def take_flags(
    argv: list[str], valued: Sequence[str], error: type[Exception]
) -> tuple[dict[str, str | bool], list[str]]:
    """Take `--blockskip_quiet` and the flags named in `valued` out of `argv`: (their values, the rest)."""
    values: dict[str, str | bool] = {}
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if not item.startswith(PREFIX):
            rest.append(item)
            continue
        name, has_value, value = item[len(PREFIX):].partition("=")
        if name == "quiet":
            values[name] = True
            continue
        if name not in valued:
            known = ", ".join(PREFIX + known for known in (*valued, "quiet"))
            raise error(f"unknown blockskip flag {item.split('=')[0]} (known: {known})")
        if not has_value:
            value = next(items, None)
            if value is None or value.startswith("--"):
                raise error(f"{PREFIX}{name} needs a value")
        values[name] = value
    return values, rest


def plan_and_patches(values: dict[str, str | bool], error: type[Exception]) -> tuple[str, bool, bool]:
    """The flags every adapter reads: (plan, dynamic patches?, quiet?)."""
    if "plan" not in values:
        raise error("--blockskip_plan PLAN is required (a plan file, see docs/plan.md)")
    patches = values.get("patches", "dynamic")
    if patches not in ("dynamic", "off"):
        raise error(f"--blockskip_patches must be dynamic or off, not {patches!r}")
    return str(values["plan"]), patches == "dynamic", bool(values.get("quiet"))


def split_script_arguments(argv: list[str], error: type[Exception], no_script: str,
                           valued: Sequence[str] = ("plan", "patches")) -> AdapterArguments:
    """`SCRIPT [script arguments]` with the adapter's flags anywhere; `no_script` is the message without one.
    `valued` names the flags this adapter takes a value for (adding "ralu" enables `--blockskip_ralu`)."""
    values, rest = take_flags(argv, valued, error)
    if not rest or rest[0].startswith("-"):
        raise error(no_script)
    plan, dynamic_patches, quiet = plan_and_patches(values, error)
    ralu = values.get("ralu")
    return AdapterArguments(rest[0], plan, dynamic_patches, quiet, rest[1:], str(ralu) if ralu is not None else None)


def read_ralu_flag(value: str, error: type[Exception]):
    """`--blockskip_ralu`'s value, a RALU preset name (4x, 7x) or a settings JSON file, as `RALUSettings`."""
    from ..sampling import RALUSettings, RALUSettingsError

    try:
        return RALUSettings.load(value)
    except RALUSettingsError as problem:
        raise error(f"--blockskip_ralu {value}: {problem}") from None
