"""A tiny torchvision look-alike, test-only: the transforms sd-scripts' train_util uses on the FLUX
LoRA path (`Compose`, `ToTensor` on PIL images and HWC uint8 arrays, `Normalize`). The PyPI
torchvision wheel does not load beside the CPU torch wheel, so tests/test_kohya_upstream.py puts
this folder on the driver's `sys.path` only when the real torchvision cannot be imported."""

__version__ = "0.0.0+blockskip-test-shim"
