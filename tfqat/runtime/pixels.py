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


def pixel_quantization(dtype) -> tuple[float, int] | None:
    """(scale, zero point) of the pixel convention for an integer input type, else None."""
    zero_point = _PIXEL_ZERO_POINTS.get(np.dtype(dtype))
    return None if zero_point is None else (1.0, zero_point)


def quantize_pixels(images, dtype) -> np.ndarray:
    """Pixels 0..255 [N, H, W, 3] (or one [H, W, 3]), uint8 or float -> the model's input type."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    dtype = np.dtype(dtype)
    if images.dtype == np.uint8 and dtype in _PIXEL_ZERO_POINTS:
        # Whole pixels need no rounding or clipping, and pixel - 128 as int8 is the pixel with
        # its top bit flipped: one pass instead of five over a float copy.
        return images if dtype == np.uint8 else (images ^ np.uint8(0x80)).view(np.int8)
    images = images.astype(np.float32, copy=False)
    if dtype not in _PIXEL_ZERO_POINTS:
        return images.astype(dtype)
    info = np.iinfo(dtype)
    quantized = np.round(images) + _PIXEL_ZERO_POINTS[dtype]
    return np.clip(quantized, info.min, info.max).astype(dtype)
