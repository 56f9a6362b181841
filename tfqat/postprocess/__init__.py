"""Numpy decoders shared by every backend (Keras, TFLite, ONNX, OpenVINO): detection (DFL,
NMS), pose (sub-pixel heatmap peaks), and pycocotools metrics. No TensorFlow; may import `data`."""
