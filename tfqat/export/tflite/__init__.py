"""The .tflite route: `convert` (TensorFlow: Keras -> bytes), `flatbuffer` (read, inspect,
rename), `validate` (fully int8, informative outputs). Running a file is `tfqat.runtime.tflite`."""
