"""Catch the script's own parsed arguments the moment its `parse_args()` returns, and check them.

The scripts call a plain `parser.parse_args()` inside their `parse_args()` and keep the result in
a module-level `args`. Wrapping `argparse.ArgumentParser.parse_args` for the duration of the run
hands the adapter that namespace before any model, dataset or class image is loaded, so
incompatible flags fail in a second instead of after minutes of loading.

Example:
    >>> import argparse
    >>> from blockskip import BlockSkipPlan
    >>> from blockskip.integrations.patching import Patches
    >>> from blockskip.integrations.diffusers.session import ScriptSession
    >>> session = ScriptSession(BlockSkipPlan.from_dict({}), verbose=False)
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--pretrained_model_name_or_path"); _ = parser.add_argument("--output_dir")
    >>> with Patches() as patches:
    ...     install_argument_hook(patches, session)
    ...     _ = parser.parse_args(["--pretrained_model_name_or_path", "m", "--output_dir", "o"])
    >>> session.args.output_dir
    'o'
"""

from __future__ import annotations

import argparse
import functools

from ..patching import Patches
from .checks import check_script_args
from .session import ScriptSession

# A namespace with these is the training script's (not accelerate's or another library's).
_SCRIPT_ARGUMENTS = ("pretrained_model_name_or_path", "output_dir")


def install_argument_hook(patches: Patches, session: ScriptSession) -> None:
    original = argparse.ArgumentParser.parse_args

    @functools.wraps(original)
    def parse_args(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        if session.args is None and all(hasattr(parsed, name) for name in _SCRIPT_ARGUMENTS):
            check_script_args(parsed, session.plan, session.dynamic_patches)
            session.args = parsed
        return parsed

    patches.set(argparse.ArgumentParser, "parse_args", parse_args)
