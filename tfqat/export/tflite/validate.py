"""Validation of an int8 .tflite: fully integer, and outputs that carry information."""

import collections

import numpy as np

from tfqat.export.errors import ExportValidationError
from tfqat.export.tflite.flatbuffer import (
    FLOAT_TYPES,
    TYPE_NAMES,
    inspect_model,
    is_constant,
    model_object,
    op_name,
    read_bytes,
    text,
)
from tfqat.runtime.pixels import INPUT_QUANTIZATION
from tfqat.runtime.tflite import TFLiteRunner


def _static_problems(model) -> list[str]:
    """Float tensors, ops without an int8 kernel, non-int8 model inputs/outputs."""
    problems = []
    subgraph = model.subgraphs[0]
    for label, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
        for index in indices:
            tensor = subgraph.tensors[index]
            type_name = TYPE_NAMES.get(tensor.type)
            if type_name != "INT8":
                producers = [
                    f"{op_name(model, op)} (op #{i})"
                    for i, op in enumerate(subgraph.operators)
                    if index in op.outputs
                ]
                problems.append(
                    f"model {label} {text(tensor.name)!r} is {type_name}, not INT8"
                    + (f" (made by {', '.join(producers)})" if producers else "")
                )
    for s, graph in enumerate(model.subgraphs):
        users = collections.defaultdict(list)
        for i, op in enumerate(graph.operators):
            for index in [*op.inputs, *op.outputs]:
                if index >= 0:
                    users[index].append(f"{op_name(model, op)} (op #{i})")
        floats = [
            (index, tensor)
            for index, tensor in enumerate(graph.tensors)
            if TYPE_NAMES.get(tensor.type) in FLOAT_TYPES
        ]
        for index, tensor in floats:
            problems.append(
                f"float tensor {text(tensor.name)!r} ({TYPE_NAMES[tensor.type]}"
                f"{', constant' if is_constant(model, tensor) else ''}) used by "
                f"{', '.join(users[index]) or 'no op'}" + (f" in subgraph {s}" if s else "")
            )
        for i, op in enumerate(graph.operators):
            name = op_name(model, op)
            activations = [
                graph.tensors[t]
                for t in [*op.inputs, *op.outputs]
                if t >= 0 and not is_constant(model, graph.tensors[t])
            ]
            kinds = sorted({TYPE_NAMES.get(t.type, str(t.type)) for t in activations})
            if name.startswith(("CUSTOM", "FLEX")) or name == "DEQUANTIZE" or kinds != ["INT8"]:
                listed = ", ".join(
                    f"{text(t.name)!r} {TYPE_NAMES.get(t.type)}" for t in activations
                )
                problems.append(
                    f"op #{i} {name} does not run an int8 kernel (its tensors: {listed})"
                )
    return problems


def validate_int8(
    tflite_model,
    calibration_images,
    score_output_names=("cls_p3", "cls_p4", "cls_p5"),
    *,
    min_levels: int = 32,
    input_quantization=INPUT_QUANTIZATION,
    num_threads: int = 2,
) -> dict:
    """Checks that a file is really fully int8 and that its outputs carry information.

    Raises ExportValidationError, naming each offending tensor / op, when: the model input or an
    output is not int8; any tensor is float; any op does not run on int8 activations
    (DEQUANTIZE, custom/Flex ops, int32/float activations); the input quantization is not
    `input_quantization` (None: not checked); LiteRT with its default XNNPACK delegate cannot
    load or run the file (a diverged model converts but XNNPACK refuses it); an output uses
    fewer than `min_levels` distinct int8 values over `calibration_images`; or a score output
    (`score_output_names`, None for none) is one single value.

    Args:
      tflite_model: bytes or path.
      calibration_images: float32 [N, H, W, 3] pixels 0..255 (real images, a dozen or more).

    Returns:
      {"size_bytes", "op_counts", "op_versions", "tensor_types", "input": {name, shape, dtype,
      scale, zero_point}, "outputs": [{name, shape, dtype, scale, zero_point, distinct_levels,
      min, max}], "delegate_nodes", "num_images"}.
    """
    data = read_bytes(tflite_model)
    model = model_object(data)
    report = inspect_model(data)
    problems = _static_problems(model)
    (input_summary,) = report.pop("inputs")
    report["input"] = input_summary
    if input_quantization is not None and input_summary["dtype"] == "int8":
        got = (input_summary["scale"], input_summary["zero_point"])
        if got != tuple(input_quantization):
            problems.append(
                f"input {input_summary['name']!r} quantization (scale, zero point) is {got}, "
                f"expected {tuple(input_quantization)} (int8 = pixel - 128)"
            )
    if problems:
        raise ExportValidationError("not a fully-int8 file:\n  " + "\n  ".join(problems))

    try:
        runner = TFLiteRunner(data, num_threads=num_threads)
        raw = runner.raw(calibration_images)
    except (RuntimeError, ValueError) as e:
        raise ExportValidationError(
            f"LiteRT with its default XNNPACK delegate cannot load or run the file: {e}"
        ) from e
    nodes = runner.interpreter._get_ops_details()  # noqa: SLF001  (no public equivalent)
    report["delegate_nodes"] = sum(1 for op in nodes if op["op_name"] == "DELEGATE")
    report["num_images"] = int(len(raw[0]))

    summaries = {s["name"]: s for s in report.pop("outputs")}
    report["outputs"] = []
    for name, values, detail in zip(runner.output_names, raw, runner.output_details):
        summary = dict(summaries.get(detail["name"], {"name": name}))
        summary["name"] = name
        summary.update(
            distinct_levels=int(np.unique(values).size),
            min=int(values.min()),
            max=int(values.max()),
        )
        report["outputs"].append(summary)
        if summary["distinct_levels"] < min_levels:
            problems.append(
                f"output {name!r} uses {summary['distinct_levels']} distinct int8 levels "
                f"(< {min_levels}) over {report['num_images']} images: it barely varies, or "
                "its quantization range is far wider than its values"
            )
        if score_output_names and name in score_output_names and summary["distinct_levels"] == 1:
            problems.append(
                f"score output {name!r} is the single value {summary['min']} on every image"
            )
    missing = [n for n in score_output_names or () if n not in runner.output_names]
    if missing:
        problems.append(
            f"score outputs {missing} not among the file's outputs {runner.output_names}"
        )
    if problems:
        raise ExportValidationError("unusable int8 outputs:\n  " + "\n  ".join(problems))
    return report
