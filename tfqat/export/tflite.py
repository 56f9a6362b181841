"""The .tflite export API: conversion, validation, naming and running.

Re-exports `tfqat.export.tflite_runtime` (numpy + LiteRT only) and, on first access only,
`convert_int8` / `convert_float32` from `tfqat.export.tflite_convert`, so importing this module
does not import TensorFlow (a device has none).
"""

from tfqat.export.tflite_runtime import (
    INPUT_QUANTIZATION,
    ExportValidationError,
    TFLiteRunner,
    inspect_model,
    kernel_sparsity,
    output_names,
    set_io_names,
    validate_int8,
    weight_sparsity,
    write_atomically,
)

__all__ = [
    "INPUT_QUANTIZATION",
    "ExportValidationError",
    "TFLiteRunner",
    "convert_float32",
    "convert_int8",
    "inspect_model",
    "kernel_sparsity",
    "output_names",
    "set_io_names",
    "validate_int8",
    "weight_sparsity",
    "write_atomically",
]


def __getattr__(name):  # PEP 562: conversion needs TensorFlow, loaded on first use only.
    if name in ("convert_int8", "convert_float32"):
        from tfqat.export import tflite_convert

        return getattr(tflite_convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
