"""A tiny torchvision look-alike, test-only: just the image transforms that the diffusers DreamBooth
scripts' datasets and sd-scripts' FLUX LoRA path call, written with PIL and torch.

The PyPI torchvision wheel does not load beside the CPU torch wheel used here, so
`tests/test_diffusers_upstream.py` and `tests/upstream_standins/kohya/real_upstream_driver.py` put
this folder on the path when (and only when) the real torchvision cannot be imported. Nothing
blockskip patches passes through it.
"""

__version__ = "0.0.0+blockskip-test-shim"
