"""The activations both model families offer, by name. TensorFlow is imported only when a layer
is built, so the recipe check reads the names without it."""


def _silu(name):
    from tfqat.tf_compat import keras

    return keras.layers.Activation("swish", name=name)


def _relu6(name):
    from tfqat.tf_compat import keras

    return keras.layers.ReLU(6.0, name=name)


# TF-MOT's default scheme quantizes Activation("swish") and ReLU(6.0). hard-swish is left out:
# tf_keras has no "hard_swish" activation and building one (x * relu6(x + 3) / 6) needs a
# constant add, i.e. a Lambda or a custom layer that TF-MOT would not quantize.
ACTIVATIONS = {"silu": _silu, "relu6": _relu6}
