"""Full-int8 .tflite -> rewritten QDQ ONNX -> OpenVINO IR, and the run's Intel files.

`tflite_to_onnx` converts with `tf2onnx.convert.from_tflite` (int8 weights kept), applies
`rewrites.rewrite_for_openvino` and checks the result; `openvino.convert_model` turns the ONNX
file into `openvino/model_int8.xml`; the float IR comes the same way (tf2onnx, no rewrite) from
`model_float32.tflite` (`tflite_to_openvino_float`). Every file is written under a temporary
name, then renamed. `export_intel` writes and checks all of them for a run's export/ folder.
"""

import os

from tfqat.export.errors import ExportValidationError
from tfqat.export.openvino.checks import check_ir_size, check_onnx_int8, check_openvino_int8
from tfqat.export.openvino.rewrites import rewrite_for_openvino
from tfqat.fileio import atomic_write


def tflite_to_onnx(
    tflite_path, onnx_path, seven_bit_first_layer: bool = True, calibration_images=None
) -> dict:
    """A .tflite file -> .onnx, rewritten for OpenVINO (`rewrite_for_openvino`, with
    `calibration_images`), checked (`check_onnx_int8`) and written atomically.

    Returns the rewrite summary, the check's counts and {"path", "size_bytes", "output_names"}.
    """
    import tf2onnx

    model, _ = tf2onnx.convert.from_tflite(os.fspath(tflite_path))
    summary = rewrite_for_openvino(model, seven_bit_first_layer, calibration_images)
    summary.update(check_onnx_int8(model))
    data = model.SerializeToString()
    atomic_write(os.fspath(onnx_path), data)
    summary.update(
        path=os.fspath(onnx_path),
        size_bytes=len(data),
        output_names=[o.name for o in model.graph.output],
    )
    return summary


def onnx_to_openvino(onnx_path, xml_path, compress_to_fp16: bool = False) -> dict:
    """An .onnx file -> OpenVINO IR (.xml + .bin) with a static [1, H, W, 3] input.

    Both files go through temporary names and renames (.bin first), so a reader never pairs
    a new .xml with an old .bin. Returns {"xml", "bin", "bin_bytes", "input_shape"}.
    """
    import openvino as ov

    model = ov.convert_model(os.fspath(onnx_path))
    return _save_ir(_with_static_batch(model), xml_path, compress_to_fp16)


def _with_static_batch(model):
    (model_input,) = model.inputs
    shape = model_input.get_partial_shape()
    if shape.is_dynamic:
        if any(d.is_dynamic for d in list(shape)[1:]):
            raise ExportValidationError(f"model input {shape} has a dynamic height/width/channel")
        model.reshape([1, *[d.get_length() for d in list(shape)[1:]]])
    return model


def _save_ir(model, xml_path, compress_to_fp16=False) -> dict:
    import openvino as ov

    xml_path = os.fspath(xml_path)
    os.makedirs(os.path.dirname(os.path.abspath(xml_path)), exist_ok=True)
    base = os.path.splitext(xml_path)[0]
    tmp = f"{base}.tmp-{os.getpid()}"
    ov.save_model(model, f"{tmp}.xml", compress_to_fp16=compress_to_fp16)
    os.replace(f"{tmp}.bin", f"{base}.bin")
    os.replace(f"{tmp}.xml", xml_path)
    return {
        "xml": xml_path,
        "bin": f"{base}.bin",
        "bin_bytes": os.path.getsize(f"{base}.bin"),
        "input_shape": [d.get_length() for d in model.inputs[0].get_partial_shape()],
    }


def tflite_to_openvino_float(tflite_path, xml_path) -> dict:
    """The float32 .tflite -> float32 OpenVINO IR, through tf2onnx like the int8 IR.

    The same graph layout as the int8 IR, so NNCF's INT8 of it differs from ours only in its
    quantization; and NNCF's INT8 of it was faster (0.93x) than of OpenVINO's own TFLite
    frontend's IR of the same file (extra int8 Transposes there), so it is the stronger peer.
    """
    import tf2onnx

    model, _ = tf2onnx.convert.from_tflite(os.fspath(tflite_path))
    onnx_path = f"{os.path.splitext(os.fspath(xml_path))[0]}.tmp-{os.getpid()}.onnx"
    os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
    atomic_write(onnx_path, model.SerializeToString())
    try:
        return onnx_to_openvino(onnx_path, xml_path)
    finally:
        os.remove(onnx_path)


def export_intel(
    export_dir, calibration_images, num_threads: int = 2, seven_bit_first_layer: bool = True
) -> dict:
    """Writes and validates the Intel artifacts of a run's export directory.

    Reads export_dir/model_int8.tflite and model_float32.tflite; writes model_int8.onnx,
    openvino/model_int8.xml/.bin and openvino/model_float.xml/.bin; raises
    ExportValidationError when the ONNX convolutions lack int8 weights, OpenVINO runs fewer
    than 95% of the convolutions in i8/u8, or the int8 IR's .bin is over 0.3x the float IR's.
    `calibration_images` (float32 [N, H, W, 3] pixels 0..255, the run's letterboxed train
    images) bound the u8 inputs of `rewrites.saturation_safe_weights`.
    `seven_bit_first_layer`: see `rewrites.seven_bit_first_convolutions`. `num_threads`: of the
    OpenVINO model compiled to read its convolutions' precisions. How close the files come to
    the .tflite is measured by evaluation (`tfqat.evaluate.parity`), not here.

    Returns {"onnx": {...}, "openvino_int8": {...}, "openvino_float": {...},
    "conv_precisions": {precision: count}, "ir_size_ratio"}.
    """
    from tfqat.runtime.onnx_openvino import OpenVINORunner

    int8_tflite = os.path.join(export_dir, "model_int8.tflite")
    onnx_path = os.path.join(export_dir, "model_int8.onnx")
    int8_xml = os.path.join(export_dir, "openvino", "model_int8.xml")
    float_xml = os.path.join(export_dir, "openvino", "model_float.xml")
    summary = {
        "onnx": tflite_to_onnx(int8_tflite, onnx_path, seven_bit_first_layer, calibration_images)
    }
    summary["openvino_int8"] = onnx_to_openvino(onnx_path, int8_xml)
    summary["openvino_float"] = tflite_to_openvino_float(
        os.path.join(export_dir, "model_float32.tflite"), float_xml
    )
    summary["ir_size_ratio"] = round(check_ir_size(int8_xml, float_xml), 4)
    openvino_int8 = OpenVINORunner(int8_xml, num_threads=num_threads)
    summary["conv_precisions"] = check_openvino_int8(openvino_int8.compiled)
    return summary
