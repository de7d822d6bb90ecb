"""The one error the kohya adapter raises: a setting that cannot work, refused with the reason."""


class KohyaAdapterError(RuntimeError):
    """A kohya sd-scripts flag, network module or plan setting that blockskip cannot honour.

    Raised before any model loads wherever the setting is known by then (the parsed arguments,
    the plan); the message names the user's value and what to do instead.
    """
