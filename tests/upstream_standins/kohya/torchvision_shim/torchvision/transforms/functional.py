"""pil_to_tensor only."""

import numpy as np
import torch


def pil_to_tensor(image):
    array = np.asarray(image)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
