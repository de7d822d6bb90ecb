"""Resize, CenterCrop, RandomCrop, RandomHorizontalFlip, Compose, ToTensor, Normalize on PIL images."""

import enum
import random

import numpy as np
import torch
from PIL import Image

from . import functional


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


_PIL_FILTERS = {
    InterpolationMode.NEAREST: Image.NEAREST,
    InterpolationMode.BILINEAR: Image.BILINEAR,
    InterpolationMode.BICUBIC: Image.BICUBIC,
}


class Resize:
    """An int resizes the short side to it (aspect kept); a pair is (height, width)."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        if isinstance(self.size, int):
            scale = self.size / min(image.size)
            width, height = (round(side * scale) for side in image.size)
            width, height = (self.size, height) if image.width <= image.height else (width, self.size)
        else:
            height, width = self.size
        return image.resize((width, height), _PIL_FILTERS[self.interpolation])


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class CenterCrop:
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, image):
        height, width = self.size
        top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
        return functional.crop(image, top, left, height, width)


class RandomCrop:
    def __init__(self, size):
        self.size = _pair(size)

    @staticmethod
    def get_params(image, output_size):
        height, width = output_size
        return random.randint(0, image.height - height), random.randint(0, image.width - width), height, width

    def __call__(self, image):
        return functional.crop(image, *self.get_params(image, self.size))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image):
        return image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else image


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class ToTensor:
    """PIL image (as RGB) or HWC uint8 array -> float tensor (C, H, W) in [0, 1]."""

    def __call__(self, image):
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32) / 255.0
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, tensor):
        return (tensor - self.mean[:, None, None]) / self.std[:, None, None]
