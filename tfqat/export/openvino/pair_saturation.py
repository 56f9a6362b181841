"""The int16 pair sums of u8 x s8 convolutions on CPUs without VNNI, and the per-output-channel
weight rescale that keeps them in range (`rewrites.saturation_safe_weights`).

Such CPUs (AVX2, AVX-512 before Cascade Lake) multiply u8 activations by s8 weights with
vpmaddubsw, which adds the products of two consecutive input channels (same kernel tap) into an
int16 that saturates.
"""

import numpy as np

# CPUs without VNNI sum the u8 x s8 products of two consecutive input channels into a
# saturating int16 (vpmaddubsw): a pair sum must stay within +-32767.
INT16_PAIR_LIMIT = 32767


def fit_pairs_to_int16(weights, maxima):
    """(int8 weights, factor per output channel) with every pair sum within int16, or
    (None, None) when no channel needs it. weights: int8 [O, C, kh, kw]; maxima: [C]."""
    in_channels = weights.shape[1]
    weights = weights.astype(np.float64)
    if in_channels % 2:  # the kernels pad the input channels with zeros
        weights = np.concatenate([weights, np.zeros_like(weights[:, :1])], axis=1)
        maxima = np.append(maxima, 0.0)
    maxima = maxima.reshape(1, -1, 1, 1)

    def worst_pairs(w):  # [O]: the largest same-sign pair sum at the u8 maxima
        products = maxima * w
        positive, negative = np.maximum(products, 0), np.minimum(products, 0)
        return np.maximum(
            (positive[:, 0::2] + positive[:, 1::2]).reshape(len(w), -1).max(1),
            -(negative[:, 0::2] + negative[:, 1::2]).reshape(len(w), -1).min(1),
        )

    loads = worst_pairs(weights)
    if not np.any(loads > INT16_PAIR_LIMIT):
        return None, None
    fitted, factors = weights.copy(), np.ones(len(weights))
    for o in np.nonzero(loads > INT16_PAIR_LIMIT)[0]:
        factor = loads[o] / INT16_PAIR_LIMIT
        while worst_pairs(np.round(weights[o : o + 1] / factor))[0] > INT16_PAIR_LIMIT:
            factor *= 1.002  # rounding a weight up can push its pair back over
        fitted[o], factors[o] = np.round(weights[o] / factor), factor
    return fitted[:, :in_channels].astype(np.int8), factors
