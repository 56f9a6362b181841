"""5. Export: trained Keras models -> deployable files, each checked before it is kept.

`tflite/` (conversion, flatbuffer, int8 validation), `openvino/` (the .tflite -> ONNX ->
OpenVINO IR route), `metadata` (what a device needs, embedded in each file), `artifacts` (the
run's export/ folder). May import data, models, tasks, optimize and runtime; never evaluate.
"""
