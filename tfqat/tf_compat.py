"""The one place tfqat imports TensorFlow, so that Keras is always tf_keras (Keras 2).

TF 2.21 defaults to Keras 3, which TF-MOT cannot quantize or prune. `import tfqat` sets
TF_USE_LEGACY_KERAS=1; that only works if TensorFlow was not imported before.
"""

import sys

import tfqat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

_ALREADY_IMPORTED = "tensorflow" in sys.modules

import tensorflow as tf  # noqa: E402


def _keras_is_legacy() -> bool:
    # Not tf.keras.__name__: once keras_cv is imported it reads "tensorflow.keras" even when
    # its layers are tf_keras's.
    return tf.keras.layers.Layer.__module__.startswith("tf_keras")


if not _keras_is_legacy():
    raise ImportError(
        "tfqat needs Keras 2 (tf_keras), but TensorFlow was already imported with Keras 3 "
        f"(tf.keras is {tf.keras.__name__}). Either `import tfqat` before "
        "`import tensorflow`, or start Python with TF_USE_LEGACY_KERAS=1 in the environment "
        "(export TF_USE_LEGACY_KERAS=1)."
        + (" TensorFlow had been imported before tfqat." if _ALREADY_IMPORTED else "")
    )

keras = tf.keras

__all__ = ["tf", "keras"]
