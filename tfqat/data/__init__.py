"""1. Data: COCO readers and the dataset validator (`coco`), synthetic sets (`synthetic`),
letterbox / crop geometry and the tf.data pipelines. Imports no other tfqat package; only
`pipeline` imports TensorFlow."""
