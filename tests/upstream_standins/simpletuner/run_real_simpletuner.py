"""Run `python -m blockskip.integrations.simpletuner` with real SimpleTuner on a machine without CUDA.

SimpleTuner 4.10.1's collate step calls `.pin_memory()`, which fails where CUDA is absent; this
test-only wrapper makes it a no-op there, then runs the adapter's command line unchanged.
"""

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # this folder holds the stand-in package named `simpletuner`: never import it here

import torch  # noqa: E402

if not torch.cuda.is_available():
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self

from blockskip.integrations.simpletuner.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
