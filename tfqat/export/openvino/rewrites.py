"""QDQ ONNX rewrites that make OpenVINO run a full-int8 .tflite's convolutions in INT8.

Route (README.md, "Results": how the Intel route gets its int8): `tf2onnx.convert.from_tflite`
on the full-int8 file keeps its int8 weights; `rewrite_for_openvino` then edits the QDQ graph so
that OpenVINO's CPU plugin compiles it and runs it as fast as its own post-training INT8 (NNCF):
  * one scale per Concat and its inputs, instead of requantizing inputs (`shared_concat_scales`);
  * int8 Concat -> float Concat of dequantized inputs (the int8 one does not compile), without
    the identity Q/DQ after it (`float_concats`);
  * SiLU without Q/DQ inside, so it fuses into the convolution (`float_silus`);
  * the first convolution's weights in 7 bits, against int16 saturation on CPUs without VNNI
    (`seven_bit_first_convolutions`; NNCF's default does the same);
  * every other convolution's weights rescaled per output channel, only as far as its
    calibrated u8 input needs, against the same saturation (`saturation_safe_weights`);
  * a float pixel input quantized in the graph right before its DequantizeLinear, so the first
    convolution runs in u8 too (`float_input`);
  * float outputs straight from the last convolutions (`float_outputs`).
Output names stay the .tflite's (the Keras model's order). `convert` writes the rewritten ONNX
file and turns it into the OpenVINO IR.
"""

import numpy as np

from tfqat.export.errors import ExportValidationError
from tfqat.export.openvino.onnx_graph import (
    INTEGER_TYPES,
    Graph,
    activation_quantization,
    attribute,
    bypass_dequantizers,
    dequantize_node,
    dequantizers_through_layout_ops,
    existing_dequantize,
    initializer,
    insert_after,
    insert_before,
    intermediate_values,
    quantize_node,
    reads_int8_weights,
    reads_tensor,
    remove_dead_nodes,
    same_values,
    set_attribute,
    unquantized_source,
)
from tfqat.export.openvino.pair_saturation import fit_pairs_to_int16


def float_concats(model) -> list[str]:
    """Rewrites every Concat of integer tensors into DQ per input -> float Concat -> Q.

    OpenVINO's CPU plugin cannot compile a Concat of int8 tensors. The int8 output keeps its
    name, scale and zero point (those of the DequantizeLinear reading it). TFLite's int8
    Concat has one scale and zero point for all inputs and the output, so the Q -> DQ after
    the float Concat is an identity: readers of such a DQ read the float Concat instead, and
    OpenVINO runs the Concat in u8 without requantizing each input.
    Returns the names of the rewritten Concat nodes.
    """
    graph = Graph(model.graph)
    rewritten = []
    for node in list(model.graph.node):
        if node.op_type != "Concat" or not any(graph.is_integer(i) for i in node.input):
            continue
        output_quantization = graph.quantization_of(node.output[0])
        added, input_quantizations = [], []
        for position, name in enumerate(node.input):
            if graph.is_integer(name):
                input_quantizations.append(graph.quantization_of(name))
                dequantize = existing_dequantize(graph, name)
                if dequantize is None:
                    dequantize = dequantize_node(graph, name, *input_quantizations[-1])
                    added.append(dequantize)
                node.input[position] = dequantize.output[0]
        integer_output, float_output = node.output[0], graph.unique(f"{node.output[0]}_float")
        node.output[0] = float_output
        insert_before(model.graph, node, added)
        insert_after(
            model.graph,
            node,
            quantize_node(graph, float_output, *output_quantization, integer_output),
        )
        if all(same_values(graph, q, output_quantization) for q in input_quantizations):
            bypass_dequantizers(graph, integer_output, float_output, output_quantization)
        rewritten.append(node.name)
    remove_dead_nodes(model)
    return rewritten


# A Concat's scale is shared with a tensor's other readers only up to this many times its own
# scale (one 8.7x coarser cost a main-job ONNX file 2 % mAP: docs/results/openvino.md).
MAX_SHARED_SCALE_RATIO = 4.0


def shared_concat_scales(model) -> list[str]:
    """A tensor requantized for a Concat gets the Concat's scale and zero point everywhere.

    TFLite's int8 Concat needs its inputs at its own scale, so a tensor that is also read
    elsewhere (a C2f branch read by the next bottleneck and by the Concat) is written at its
    own scale and requantized (QuantizeLinear(DequantizeLinear(x))) for the Concat. OpenVINO
    runs each requantization as a separate node (9 on the pico detector, its whole latency gap
    to NNCF, which shares one scale per Concat). Here the tensor is quantized once at the
    Concat's scale for every reader. This changes the values of those tensors by up to half
    a step; measured on the pico detector, the outputs came out slightly closer to the
    .tflite's than with the requantization kept. Returns the names of the removed requantizers.
    """
    graph = Graph(model.graph)
    removed = []
    for requantize in list(model.graph.node):
        readers = graph.consumers[requantize.output[0]]
        if (
            requantize.op_type != "QuantizeLinear"
            or not readers
            or any(r.op_type != "Concat" for r in readers)
        ):
            continue
        dequantize = graph.producer.get(requantize.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        original = graph.producer.get(dequantize.input[0])
        if original is None or original.op_type != "QuantizeLinear":
            continue
        coarser = initializer(graph, requantize.input[1]) / initializer(graph, original.input[1])
        if coarser > MAX_SHARED_SCALE_RATIO:
            continue  # its other readers would lose too much precision
        original.input[1:3] = requantize.input[1:3]
        for reader in graph.consumers[original.output[0]]:
            if reader.op_type == "DequantizeLinear":
                reader.input[1:3] = requantize.input[1:3]
        for reader in readers:
            reader.input[:] = [
                original.output[0] if i == requantize.output[0] else i for i in reader.input
            ]
        graph.consumers[original.output[0]].extend(readers)
        removed.append(requantize.name)
    remove_dead_nodes(model)
    return removed


def float_input(model) -> list[str]:
    """The int8 graph input -> a float input quantized inside the graph (int8 = pixel - 128).

    tf2onnx reads the int8 input through Transpose (NHWC -> NCHW) and DequantizeLinear. The
    Transpose now moves float pixels and a QuantizeLinear with the DQ's own scale and zero point
    goes right before the DQ: OpenVINO fuses only an adjacent Q/DQ pair into the FakeQuantize
    that makes the first convolution run in u8. Returns the DequantizeLinear nodes now fed so.
    """
    from onnx import TensorProto

    (graph_input,) = model.graph.input
    if graph_input.type.tensor_type.elem_type not in INTEGER_TYPES:
        return []
    graph = Graph(model.graph)
    fed = []
    for tensor, dequantize in dequantizers_through_layout_ops(graph, graph_input.name):
        quantized = graph.unique(f"{tensor}_quantized")
        dequantize.input[0] = quantized
        quantize = quantize_node(graph, tensor, dequantize.input[1], dequantize.input[2], quantized)
        insert_before(model.graph, dequantize, [quantize])
        fed.append(dequantize.name)
    graph_input.type.tensor_type.elem_type = TensorProto.FLOAT
    return fed


def float_outputs(model) -> list[str]:
    """Each integer graph output -> float: the output's QuantizeLinear is skipped.

    tf2onnx ends each output with QuantizeLinear -> Transpose (NCHW -> NHWC). The Transpose
    now reads the last convolution's float output, as in NNCF's models: OpenVINO then writes
    the head in f32 straight from the convolution, instead of quantizing, transposing int8,
    dequantizing and reordering (pico detector: 1.12x -> 1.00x NNCF's latency). The values
    differ from the .tflite's dequantized ones by their rounding (<= half an output step), and
    are not clamped to the int8 range. Returns the output names (unchanged).
    """
    from onnx import TensorProto

    graph = Graph(model.graph)
    names = []
    for graph_output in model.graph.output:
        names.append(graph_output.name)
        if graph_output.type.tensor_type.elem_type not in INTEGER_TYPES:
            continue
        quantize = graph.producer[graph_output.name]
        while quantize.op_type in ("Transpose", "Reshape"):
            quantize = graph.producer[quantize.input[0]]
        if quantize.op_type != "QuantizeLinear":
            raise ExportValidationError(
                f"output {graph_output.name!r} comes from {quantize.op_type} {quantize.name!r}, "
                "expected QuantizeLinear (then Transpose/Reshape)"
            )
        if quantize.output[0] == graph_output.name:
            quantize.op_type, quantize.input[:] = "Identity", quantize.input[:1]
        for consumer in graph.consumers[quantize.output[0]]:
            consumer.input[:] = [
                quantize.input[0] if i == quantize.output[0] else i for i in consumer.input
            ]
        graph_output.type.tensor_type.elem_type = TensorProto.FLOAT
    remove_dead_nodes(model)
    return names


def float_silus(model) -> list[str]:
    """x * sigmoid(x) on float x: drops the Q/DQ pairs inside each SiLU.

    The int8 file quantizes the convolution's output, the sigmoid's output, then their product.
    OpenVINO fuses a Conv -> Swish -> FakeQuantize chain into one u8 convolution, but with Q/DQ
    pairs inside the SiLU it runs the sigmoid and product as separate nodes that cost as much
    as the convolutions. Only the product's Q/DQ stays (the next layer's input quantization):
    the values differ from the .tflite's by the skipped roundings, about an output step.
    Returns the names of the rewritten Mul nodes.
    """
    graph = Graph(model.graph)
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for x_name, s_name in (node.input, node.input[::-1]):
            sigmoid = graph.producer.get(unquantized_source(graph, s_name) or "")
            x = unquantized_source(graph, x_name)
            if sigmoid is None or sigmoid.op_type != "Sigmoid" or x is None:
                continue
            if sigmoid.input[0] != x_name and unquantized_source(graph, sigmoid.input[0]) != x:
                continue
            sigmoid.input[0] = x
            node.input[:] = [x, sigmoid.output[0]]
            rewritten.append(node.name)
            break
    remove_dead_nodes(model)
    return rewritten


def seven_bit_first_convolutions(model) -> list[str]:
    """Requantizes the weights of the convolutions reading the image to 7 bits (-64..63).

    CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) multiply u8 activations by s8 weights
    in pairs summed in int16, which saturates; the image's pixels fill 0..255 in correlated
    channels, so the first convolution saturates most (measured on an AVX2 host: 6-8 output
    steps on average, 70 at worst, against about 1 with a float first convolution). Halving its
    weight resolution (scale x2) keeps every pair sum in range, as NNCF's default
    `OverflowFix.FIRST_LAYER` does for its own INT8 models. Returns the rewritten Conv names.
    """
    from onnx import numpy_helper

    graph = Graph(model.graph)
    (graph_input,) = model.graph.input
    rewritten = []
    for _, dequantize in dequantizers_through_layout_ops(graph, graph_input.name):
        for conv in graph.consumers[dequantize.output[0]]:
            if conv.op_type != "Conv" or not reads_int8_weights(graph, conv.input[1]):
                continue
            weights_dq = graph.producer[conv.input[1]]
            weights, scale = (initializer(graph, n) for n in weights_dq.input[:2])
            seven_bit = np.clip(np.round(weights.astype(np.float32) / 2), -64, 63)
            names = [
                graph.unique(f"{weights_dq.input[0]}_7bit"),
                graph.unique(f"{conv.name}_scale"),
            ]
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(seven_bit.astype(weights.dtype), names[0]),
                    numpy_helper.from_array((scale * 2).astype(scale.dtype), names[1]),
                ]
            )
            weights_dq.input[0], weights_dq.input[1] = names
            rewritten.append(conv.name)
    remove_dead_nodes(model)
    return rewritten


def saturation_safe_weights(model, input_maxima=None) -> list[str]:
    """Rescales conv weights, per output channel, so that no u8 x s8 pair sum leaves int16.

    OpenVINO's int8 convolutions on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake: the
    runtime model's "jit_avx2_I8" / "jit_avx2_1x1_I8" kernels) multiply u8 activations by s8
    weights with vpmaddubsw, which adds the products of two consecutive input channels (same
    kernel tap) into an int16 that saturates: whatever lies beyond +-32767 is lost. On the pico
    ReLU6 detector the 1x1 convolution after the SPPF Concat (max-pooled channels near 255)
    lost that way on half its accumulators, and OpenVINO's outputs ended up twice as far from
    the .tflite's as onnxruntime's on the same file (box_p5: 5.4 steps on average, 3.0).

    An output channel whose worst pair (over taps and channel pairs, `max_a * w_a + max_b * w_b`
    for same-sign weights, `max_*` the u8 maxima of the input channels) exceeds 32767 gets its
    int8 weights divided by the smallest factor that brings it within (rounded to nearest) and
    its scale multiplied by that factor. On the pico detector with calibrated maxima: 4 of 5
    output channels, by 1.4x (at most 1.95x), against 2x for all with 7-bit weights; the
    onnxruntime outputs stayed as close to the .tflite's as before, and OpenVINO's came as
    close as onnxruntime's. Convolutions reading the image are left to
    `seven_bit_first_convolutions`.
    `input_maxima`: {Conv name: u8 maxima [C] of its input channels} (`u8_input_maxima` on
    calibration images); None, or a Conv missing from it: 255 for every channel (the worst
    case: safe for any input; 98% of the channels by 1.7x). Returns the rewritten Conv names.
    """
    from onnx import numpy_helper

    graph = Graph(model.graph)
    (graph_input,) = model.graph.input
    rewritten = []
    for conv in [n for n in model.graph.node if n.op_type == "Conv"]:
        weights_dq = graph.producer.get(conv.input[1])
        if (
            weights_dq is None
            or weights_dq.op_type != "DequantizeLinear"
            or weights_dq.input[0] not in graph.initializers
            or attribute(conv, "group", 1) != 1
            or reads_tensor(graph, conv.input[0], graph_input.name)
        ):
            continue
        weights, scale = (initializer(graph, n) for n in weights_dq.input[:2])
        zero_point = (
            initializer(graph, weights_dq.input[2])
            if len(weights_dq.input) > 2 and weights_dq.input[2]
            else 0
        )
        if (
            weights.dtype != np.int8
            or weights.ndim != 4
            or np.any(zero_point != 0)
            or (scale.ndim == 1 and attribute(weights_dq, "axis", 1) != 0)
        ):
            continue
        maxima = (input_maxima or {}).get(conv.name)
        maxima = np.full(weights.shape[1], 255.0) if maxima is None else np.asarray(maxima, float)
        fitted, factors = fit_pairs_to_int16(weights, maxima)
        if fitted is None:
            continue
        names = [
            graph.unique(f"{weights_dq.input[0]}_int16_safe"),
            graph.unique(f"{conv.name}_scale"),
            graph.unique(f"{conv.name}_zero_point"),
        ]
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(fitted, names[0]),
                numpy_helper.from_array(
                    (np.broadcast_to(scale, factors.shape) * factors).astype(scale.dtype), names[1]
                ),
                numpy_helper.from_array(np.zeros(len(factors), np.int8), names[2]),
            ]
        )
        weights_dq.input[:] = names
        set_attribute(weights_dq, "axis", 0)
        rewritten.append(conv.name)
    remove_dead_nodes(model)
    return rewritten


def u8_input_maxima(model, images) -> dict:
    """{Conv name: u8 maxima [C] of its input channels} over `images`, as OpenVINO feeds them.

    OpenVINO runs an int8 activation q as u8 = q + 128 (a uint8 one as it is). The Conv inputs
    come from onnxruntime without graph optimizations (`intermediate_values`).
    `images`: float32 [N, H, W, 3] pixels 0..255.
    """
    from onnx import TensorProto

    graph = Graph(model.graph)
    inputs = {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        quantization = activation_quantization(graph, conv.input[0])
        if quantization is not None:
            inputs[conv.name] = (conv.input[0], *quantization)
    tensors = list(dict.fromkeys(tensor for tensor, _, _ in inputs.values()))
    maxima = {}
    for values in intermediate_values(model, tensors, TensorProto.FLOAT, images):
        for tensor, value in values.items():
            channel_max = value.reshape(value.shape[0], value.shape[1], -1).max(axis=(0, 2))
            maxima[tensor] = np.maximum(maxima.get(tensor, channel_max), channel_max)
    result = {}
    for name, (tensor, scale, zero_point) in inputs.items():
        lowest = np.iinfo(zero_point.dtype).min
        u8 = np.round(maxima[tensor] / float(scale)) + int(zero_point) - lowest
        result[name] = np.clip(u8, 0, 255)
    return result


def rewrite_for_openvino(
    model, seven_bit_first_layer: bool = True, calibration_images=None
) -> dict:
    """Applies the rewrites of the module docstring in place; returns what each one touched.

    `seven_bit_first_layer`: see `seven_bit_first_convolutions` (on by default, as in NNCF).
    `calibration_images` (float32 [N, H, W, 3] pixels 0..255): the u8 input maxima of
    `saturation_safe_weights`; None: its worst case, every input channel up to 255.
    """
    import onnx

    summary = {
        "shared_concat_scales": shared_concat_scales(model),
        "float_concats": float_concats(model),
        "float_silus": float_silus(model),
        "seven_bit_convs": seven_bit_first_convolutions(model) if seven_bit_first_layer else [],
        "float_input": float_input(model),
        "float_outputs": float_outputs(model),
    }
    maxima = None if calibration_images is None else u8_input_maxima(model, calibration_images)
    summary["int16_safe_convs"] = saturation_safe_weights(model, maxima)
    onnx.checker.check_model(model)
    return summary
