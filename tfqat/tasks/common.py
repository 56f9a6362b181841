"""What every task shares."""

from tfqat.tf_compat import tf


def keras_predict_fn(model):
    """A backend for the shared post-processors: float32 images -> list of numpy outputs."""

    @tf.function(reduce_retracing=True)
    def forward(images):
        outputs = model(images, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return lambda images: [o.numpy() for o in forward(tf.constant(images))]


def write_validation(writer, step: int, metrics: dict, pictures, max_outputs: int) -> None:
    """Val metrics as `metrics/<name>` scalars and drawn val pictures as `val_predictions`."""
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(f"metrics/{name}", value)
        tf.summary.image("val_predictions", pictures, step=step, max_outputs=max_outputs)
    writer.flush()
