"""1. Data: COCO reading (`coco`), synthetic sets (`synthetic`), decoding (`images`), letterbox /
crop geometry, tf.data pipelines. May import `tfqat.fileio` only; TensorFlow only in `pipeline`."""
