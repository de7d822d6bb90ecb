"""The adapters' progress lines: `[blockskip] ...` on stderr, from the local main process only.

Under `accelerate launch` every process runs the adapter; only the one with `LOCAL_RANK` 0 (or
none set) writes, and `--blockskip_quiet` (`verbose=False`) silences it.

Example:
    >>> import contextlib, sys
    >>> with contextlib.redirect_stderr(sys.stdout):
    ...     log_line("3 blocks skipped")
    ...     log_line("not shown", verbose=False)
    [blockskip] 3 blocks skipped
"""

from __future__ import annotations

import os
import sys


def log_line(message: str, verbose: bool = True) -> None:
    """One `[blockskip]` line on stderr, from the local main process only."""
    if verbose and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"[blockskip] {message}", file=sys.stderr, flush=True)
