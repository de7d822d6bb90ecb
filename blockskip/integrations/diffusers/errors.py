"""The one error the diffusers adapter raises for everything it refuses.

Example:
    >>> raise ScriptAdapterError("--cache_latents cannot work with dynamic patches")
    Traceback (most recent call last):
    ...
    blockskip.integrations.diffusers.errors.ScriptAdapterError: --cache_latents cannot work with dynamic patches
"""


class ScriptAdapterError(RuntimeError):
    """A training script, its arguments or the plan cannot work with the adapter; the message says why."""
