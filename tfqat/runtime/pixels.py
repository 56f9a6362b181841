"""How pixels enter every tfqat model file: the one input-quantization convention.

Every exported model takes letterboxed RGB pixels 0..255 and normalises them inside:
  * int8 input: int8 = pixel - 128 (scale 1.0, zero point -128, `INPUT_QUANTIZATION`);
  * uint8 input: uint8 = pixel (scale 1.0, zero point 0);
  * float input: the pixels as they are.
"""

import numpy as np

# (scale, zero point) of an int8 model input: int8 = pixel - 128.
INPUT_QUANTIZATION = (1.0, -128)
_PIXEL_ZERO_POINTS = {np.dtype(np.int8): INPUT_QUANTIZATION[1], np.dtype(np.uint8): 0}


def quantize_pixels(images, dtype) -> np.ndarray:
    """Float pixels 0..255 [N, H, W, 3] (or one [H, W, 3]) -> the model's input type."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    dtype = np.dtype(dtype)
    if dtype not in _PIXEL_ZERO_POINTS:
        return images.astype(dtype)
    info = np.iinfo(dtype)
    quantized = np.round(images) + _PIXEL_ZERO_POINTS[dtype]
    return np.clip(quantized, info.min, info.max).astype(dtype)
