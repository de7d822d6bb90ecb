"""`crop(image, top, left, height, width)` and `pil_to_tensor(image)` on PIL images."""

import numpy as np
import torch


def crop(image, top, left, height, width):
    return image.crop((left, top, left + width, top + height))


def pil_to_tensor(image):
    array = np.asarray(image)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
