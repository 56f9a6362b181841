"""What every task shares."""

from tfqat.tf_compat import tf


def keras_predict_fn(model):
    """A backend for the shared post-processors: float32 images -> list of numpy outputs."""

    @tf.function(reduce_retracing=True)
    def forward(images):
        outputs = model(images, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return lambda images: [o.numpy() for o in forward(tf.constant(images))]
