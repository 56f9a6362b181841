"""What every task shares."""

import dataclasses

from tfqat.tf_compat import tf


def input_shard(dataset, global_batch: int, input_context=None):
    """The training images and per-replica batch of one input pipeline under tf.distribute.

    Pipeline i of n reads images i, i + n, i + 2n, ... of `dataset` (a CocoDataset): the workers'
    shards are disjoint, so no two workers train on the same image in an epoch, and each decodes
    only its own. Without `input_context` (one device): the whole set and the global batch.
    """
    if input_context is None:
        return dataset, global_batch
    shard = slice(input_context.input_pipeline_id, None, input_context.num_input_pipelines)
    return (
        dataclasses.replace(dataset, samples=dataset.samples[shard]),
        input_context.get_per_replica_batch_size(global_batch),
    )


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
