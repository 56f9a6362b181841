"""Exporters and validators of trained models.

`tfqat.export.tflite` is the .tflite API. Its parts: `tflite_runtime` (numpy + LiteRT only:
inspect, validate, run) and `tflite_convert` (TensorFlow: Keras model -> .tflite bytes).
"""
