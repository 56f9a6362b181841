"""What the losses share: the global-batch sums of data-parallel training, the binary entropy."""

from tfqat.tf_compat import tf


def global_batch_sum(value):
    """`value` summed over every replica's batch under tf.distribute (itself otherwise).

    A loss that divides its replica's sum by this (YOLOv8's target-score sum, the pose loss's
    keypoint weights) makes the replicas' losses, and their gradients, add up to exactly the
    loss and gradient of the global batch on one device.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, value))


def binary_entropy(p):
    """Entropy of Bernoulli(p), elementwise: the minimum of cross-entropy against soft labels p."""
    return -tf.math.xlogy(p, p) - tf.math.xlogy(1.0 - p, 1.0 - p)
