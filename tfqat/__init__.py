"""tfqat: quantization-aware training and int8 export of edge vision models.

Importing this package selects Keras 2 (tf_keras) for TensorFlow, which TF-MOT needs, without
importing TensorFlow itself: the deployment runtime (`tfqat.runtime`) must import on a device
that has no TensorFlow. Modules that need TensorFlow import it through `tfqat.tf_compat`.
"""

import os

__version__ = "0.3.0"

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels are off by default in this TensorFlow build; on this CPU they make a training
# step about 1.7x faster (tools/benchmark_pipeline.py). Set TF_ENABLE_ONEDNN_OPTS=0 to opt out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
