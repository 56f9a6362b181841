"""The Intel route: full-int8 .tflite -> QDQ ONNX (tf2onnx) -> rewrites -> OpenVINO IR, checked
to keep int8 weights and run its convolutions in i8/u8.

`convert` (the files, end to end), `rewrites` (the QDQ graph edits for OpenVINO),
`pair_saturation` (int16 pair sums on CPUs without VNNI), `checks` (the export checks),
`onnx_graph` (graph helpers they share with `tfqat.evaluate.parity`).
"""
