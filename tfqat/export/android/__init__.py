"""model_int8_android.tflite: the int8 detector with a uint8 input, its decode and
TFLite_Detection_PostProcess in the graph, and standard TFLite metadata (MediaPipe, Task
Library)."""
