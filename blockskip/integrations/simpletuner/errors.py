"""The one error the SimpleTuner adapter raises for a combination it refuses or a run that went wrong."""


class SimpleTunerAdapterError(RuntimeError):
    """A SimpleTuner option, plan setting or batch that blockskip cannot honour (the message says why)."""
