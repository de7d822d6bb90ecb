"""A training script file run in this process, as `python script.py args...` would run it.

`script_path` resolves the file (refusing a missing one with the adapter's `error`); `as_script`
sets `sys.argv` and `sys.path[0]` the way the interpreter does for a script, and restores both
afterwards, whether the script returns or raises.

Example:
    >>> import sys
    >>> from pathlib import Path
    >>> argv = sys.argv[:]
    >>> with as_script(Path("/tmp/train.py"), ["--rank", "4"]):
    ...     sys.argv, sys.path[0]
    (['/tmp/train.py', '--rank', '4'], '/tmp')
    >>> sys.argv == argv
    True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def script_path(script: str | os.PathLike, error: type[Exception]) -> Path:
    """`script` resolved; `error` when no such file exists."""
    script = Path(script).resolve()
    if not script.is_file():
        raise error(f"no training script at {script}")
    return script


@contextmanager
def as_script(script: Path, script_args: Sequence[str]) -> Iterator[None]:
    """`sys.argv` and `sys.path[0]` as `python script.py args...` would set them, restored after."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *script_args]
    sys.path.insert(0, str(script.parent))
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
