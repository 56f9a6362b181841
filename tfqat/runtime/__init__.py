"""TensorFlow-free running of any exported file: backends by format, task predictors, metadata.

Used on devices, and by evaluation, parity checks and tools. Imports only numpy, pillow, the
file's own runtime, `tfqat.data` (letterbox, crops) and `tfqat.postprocess`; never TensorFlow,
never `tfqat.export`.

    predictor = tfqat.runtime.load("runs/x/export/model_int8.tflite")
    detections = predictor.detect(image)
"""

from tfqat.runtime.predictors import DetectionPredictor, PosePredictor, load

__all__ = ["DetectionPredictor", "PosePredictor", "load"]
