"""A tiny torchvision look-alike, test-only: just the image transforms the diffusers DreamBooth
scripts' datasets call at init, written with PIL and torch.

The PyPI torchvision wheel does not load beside the CPU torch wheel used here, so
`tests/test_diffusers_upstream.py` puts this folder on `PYTHONPATH` when (and only when) the real
torchvision cannot be imported. Nothing blockskip patches passes through it.
"""

__version__ = "0.0.0+blockskip-test-shim"
