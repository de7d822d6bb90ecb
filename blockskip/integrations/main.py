"""The adapters' `main()`: usage on `--help`, a one-line `blockskip: error: ...` and status 2 on a refusal.

`run_main(argv, usage, start, error)` prints `usage` for no arguments (status 2) or `-h`/`--help`
(status 0); otherwise it calls `start(argv)`, which imports the trainer (so `--help` stays fast),
takes the adapter's flags out and trains. The adapter's `error`, `BlockSkipPlanError` and
`BlockSkipError` become the error line; anything else propagates.

Example:
    >>> def start(argv):
    ...     raise ValueError(f"cannot train with {argv}")
    >>> run_main(["--help"], "usage: adapter --blockskip_plan PLAN", start, ValueError)
    usage: adapter --blockskip_plan PLAN
    0
    >>> run_main(["--bad"], "usage: adapter --blockskip_plan PLAN", start, ValueError)  # the error on stderr
    2
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..skipping.plan import BlockSkipPlanError
from ..skipping.skip import BlockSkipError


def run_main(argv: list[str] | None, usage: str, start: Callable[[list[str]], object], error: type[Exception]) -> int:
    """Exit status of an adapter's command line (`argv` defaults to `sys.argv[1:]`)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    try:
        start(argv)
    except (error, BlockSkipPlanError, BlockSkipError) as caught:
        print(f"blockskip: error: {caught}", file=sys.stderr)
        return 2
    return 0
