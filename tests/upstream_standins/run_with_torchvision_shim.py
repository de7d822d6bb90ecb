"""`python run_with_torchvision_shim.py -m MODULE ARGS...`: run MODULE with the test-only torchvision shim.

diffusers and transformers decide once whether torchvision is installed; they are imported, and
asked, before the shim becomes importable, so only the training script's own
`from torchvision import transforms` finds it. See `torchvision_shim/torchvision/__init__.py`.
"""

import runpy
import sys
from pathlib import Path

import diffusers  # noqa: F401  (its import computes is_torchvision_available: False)
from transformers.utils import import_utils

import_utils.is_torchvision_available()  # cached: False
import_utils.is_torchvision_v2_available()

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        sys.exit("usage: python run_with_torchvision_shim.py -m MODULE [ARGS...]")
    sys.path.insert(0, str(Path(__file__).parent / "torchvision_shim"))
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
