"""The Intel route: full-int8 .tflite -> QDQ ONNX (tf2onnx) -> rewrites -> OpenVINO IR, checked
to keep int8 weights and run its convolutions in i8/u8."""
