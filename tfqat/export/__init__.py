"""Exporters and validators of trained models.

`tfqat.export.tflite` is the .tflite API. Its parts: `tflite_runner` (numpy + any TFLite
interpreter: run), `tflite_runtime` (numpy + LiteRT: inspect, validate) and `tflite_convert`
(TensorFlow: Keras model -> .tflite bytes).
"""
