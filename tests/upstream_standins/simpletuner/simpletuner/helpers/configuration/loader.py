"""Stand-in for `simpletuner.helpers.configuration.loader.load_config`."""

import json
import os
from pathlib import Path

from . import cmd_args


def load_config(args: dict = None, exit_on_error: bool = False):
    if not args:
        backend = os.environ.get("CONFIG_BACKEND", "json")
        if backend == "cmd":
            return cmd_args.parse_cmdline_args(None, exit_on_error=exit_on_error)
        if backend != "json":
            raise ValueError(f"the stand-in reads json configs only, not {backend}")
        path = Path(os.environ.get("CONFIG_PATH", "config/config")).with_suffix(".json")
        args = json.loads(path.read_text())
    arguments = []
    for name, value in args.items():
        if value is None or value == "":
            continue
        name = name if name.startswith("--") else f"--{name}"
        if value is True:
            arguments.append(name)
        elif value is not False:
            arguments += [name, str(value)]
    return cmd_args.parse_cmdline_args(arguments, exit_on_error=exit_on_error)
