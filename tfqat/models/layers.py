"""Layers both model families are built from: Conv-BN-activation, YOLOv8's C2f and SPPF.

Only layers with a quantize config in TF-MOT's default 8-bit scheme: Conv2D,
BatchNormalization (folded into the preceding Conv2D), Activation("swish") / ReLU(6.0),
MaxPooling2D, Concatenate and Add.
"""

import math

from tfqat.tf_compat import keras

layers = keras.layers


# Ultralytics' BatchNorm2d(eps=1e-3, momentum=0.03) in Keras terms.
_BN_MOMENTUM = 0.97
_BN_EPSILON = 1e-3


def lookup(mapping, key, what):
    if key not in mapping:
        raise ValueError(f"Unknown {what} {key!r}; valid choices: {sorted(mapping)}")
    return mapping[key]


def make_divisible(x, divisor=8):
    return int(math.ceil(x / divisor) * divisor)


def conv_bn_act(x, filters, kernel_size, strides, name, act):
    """Conv2D (no bias, 'same') -> BatchNormalization -> activation."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return act(f"{name}_act")(x)


def bottleneck(x, filters, shortcut, name, act):
    y = conv_bn_act(x, filters, 3, 1, f"{name}_cv1", act)
    y = conv_bn_act(y, filters, 3, 1, f"{name}_cv2", act)
    if shortcut and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def c2f(x, filters, depth, shortcut, name, act):
    """YOLOv8's C2f block.

    Ultralytics runs one 1x1 conv to 2c channels and chunks its output in two. Output channels of
    a conv, a BN and an elementwise activation are independent, so two 1x1 convs of c channels
    each (`cv1a`, `cv1b`) compute exactly the two chunks, with the same parameter count, and
    need no tf.split / Lambda.
    """
    hidden = filters // 2
    parts = [
        conv_bn_act(x, hidden, 1, 1, f"{name}_cv1a", act),
        conv_bn_act(x, hidden, 1, 1, f"{name}_cv1b", act),
    ]
    for i in range(depth):
        parts.append(bottleneck(parts[-1], hidden, shortcut, f"{name}_m{i}", act))
    y = layers.Concatenate(name=f"{name}_cat")(parts)
    return conv_bn_act(y, filters, 1, 1, f"{name}_cv2", act)


def sppf(x, filters, name, act, pool_size=5):
    hidden = x.shape[-1] // 2
    parts = [conv_bn_act(x, hidden, 1, 1, f"{name}_cv1", act)]
    for i in range(3):
        pool = layers.MaxPooling2D(pool_size, strides=1, padding="same", name=f"{name}_pool{i}")
        parts.append(pool(parts[-1]))
    y = layers.Concatenate(name=f"{name}_cat")(parts)
    return conv_bn_act(y, filters, 1, 1, f"{name}_cv2", act)
