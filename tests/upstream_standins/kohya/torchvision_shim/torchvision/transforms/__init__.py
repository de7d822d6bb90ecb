"""Compose, ToTensor, Normalize."""

import numpy as np
import torch

from . import functional


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class ToTensor:
    """PIL image or HWC uint8 array -> float tensor (C, H, W) in [0, 1]."""

    def __call__(self, image):
        array = np.asarray(image)
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, tensor):
        return (tensor - self.mean[:, None, None]) / self.std[:, None, None]
