"""Full-int8 .tflite -> QDQ ONNX -> OpenVINO IR whose convolutions really run in INT8.

Route (STACK.md, "ONNX and OpenVINO: the int8 trap"): `tf2onnx.convert.from_tflite` on the
full-int8 file keeps its int8 weights; `rewrite_for_openvino` then edits the QDQ graph so that
OpenVINO's CPU plugin compiles it and runs it as fast as its own post-training INT8 (NNCF):
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
Output names stay the .tflite's (the Keras model's order). `openvino.convert_model` turns the
ONNX file into `openvino/model_int8.xml`; the float IR comes the same way (tf2onnx, no
rewrite) from `model_float32.tflite` (see `tflite_to_openvino_float`).
"""

import collections
import os

import numpy as np

from tfqat.export.errors import ExportValidationError
from tfqat.fileio import atomic_write

__all__ = [
    "check_ir_size",
    "check_onnx_int8",
    "check_openvino_int8",
    "convolution_precisions",
    "export_intel",
    "keras_layer_name",
    "layer_report",
    "onnx_to_openvino",
    "output_steps",
    "parity",
    "rewrite_for_openvino",
    "tflite_to_onnx",
    "tflite_to_openvino_float",
]

_INTEGER_TYPES = (2, 3)  # onnx.TensorProto.UINT8, INT8


# === ONNX graph helpers ===


class _Graph:
    """Producer / consumer / initializer lookups over an onnx GraphProto, kept in sync by hand."""

    def __init__(self, graph):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self._counter = 0

    def unique(self, base: str) -> str:
        self._counter += 1
        return f"{base}__tfqat{self._counter}"

    def is_integer(self, name: str) -> bool:
        """True for a tensor produced by QuantizeLinear or an integer graph input/initializer."""
        node = self.producer.get(name)
        if node is not None:
            return node.op_type == "QuantizeLinear" or (
                node.op_type in ("Transpose", "Reshape") and self.is_integer(node.input[0])
            )
        if name in self.initializers:
            return self.initializers[name].data_type in _INTEGER_TYPES
        return any(
            i.name == name and i.type.tensor_type.elem_type in _INTEGER_TYPES
            for i in self.graph.input
        )

    def quantization_of(self, name: str):
        """(scale, zero point) initializer names of an integer tensor, from its Q or DQ nodes."""
        node = self.producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape"):
            node = self.producer.get(node.input[0])
        if node is not None and node.op_type == "QuantizeLinear":
            return node.input[1], node.input[2]
        for consumer in self.consumers[name]:
            if consumer.op_type == "DequantizeLinear":
                return consumer.input[1], consumer.input[2]
            if consumer.op_type in ("Transpose", "Reshape"):
                return self.quantization_of(consumer.output[0])
        raise ExportValidationError(
            f"tensor {name!r}: no QuantizeLinear/DequantizeLinear gives its scale and zero point"
        )


def _dequantize_node(graph: _Graph, tensor, scale, zero_point):
    from onnx import helper

    output = graph.unique(f"{tensor}_dequant")
    return helper.make_node("DequantizeLinear", [tensor, scale, zero_point], [output], name=output)


def _quantize_node(graph: _Graph, tensor, scale, zero_point, output):
    from onnx import helper

    return helper.make_node(
        "QuantizeLinear",
        [tensor, scale, zero_point],
        [output],
        name=graph.unique(f"{output}_quantize"),
    )


def _insert_after(graph_proto, anchor, node):
    graph_proto.node.insert(list(graph_proto.node).index(anchor) + 1, node)


def _insert_before(graph_proto, anchor, nodes):
    """Inserts `nodes` just before `anchor`, keeping the node list topologically sorted."""
    index = list(graph_proto.node).index(anchor)
    for offset, node in enumerate(nodes):
        graph_proto.node.insert(index + offset, node)


# === Rewrites ===


def float_concats(model) -> list[str]:
    """Rewrites every Concat of integer tensors into DQ per input -> float Concat -> Q.

    OpenVINO's CPU plugin cannot compile a Concat of int8 tensors. The int8 output keeps its
    name, scale and zero point (those of the DequantizeLinear reading it). TFLite's int8
    Concat has one scale and zero point for all inputs and the output, so the Q -> DQ after
    the float Concat is an identity: readers of such a DQ read the float Concat instead, and
    OpenVINO runs the Concat in u8 without requantizing each input.
    Returns the names of the rewritten Concat nodes.
    """
    graph = _Graph(model.graph)
    rewritten = []
    for node in list(model.graph.node):
        if node.op_type != "Concat" or not any(graph.is_integer(i) for i in node.input):
            continue
        output_quantization = graph.quantization_of(node.output[0])
        added, input_quantizations = [], []
        for position, name in enumerate(node.input):
            if graph.is_integer(name):
                input_quantizations.append(graph.quantization_of(name))
                dequantize = _existing_dequantize(graph, name)
                if dequantize is None:
                    dequantize = _dequantize_node(graph, name, *input_quantizations[-1])
                    added.append(dequantize)
                node.input[position] = dequantize.output[0]
        integer_output, float_output = node.output[0], graph.unique(f"{node.output[0]}_float")
        node.output[0] = float_output
        _insert_before(model.graph, node, added)
        _insert_after(
            model.graph,
            node,
            _quantize_node(graph, float_output, *output_quantization, integer_output),
        )
        if all(_same_values(graph, q, output_quantization) for q in input_quantizations):
            _bypass_dequantizers(graph, integer_output, float_output, output_quantization)
        rewritten.append(node.name)
    _remove_dead_nodes(model)
    return rewritten


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
    graph = _Graph(model.graph)
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
    _remove_dead_nodes(model)
    return removed


def _existing_dequantize(graph: _Graph, name: str):
    return next((c for c in graph.consumers[name] if c.op_type == "DequantizeLinear"), None)


def _same_values(graph: _Graph, names_a, names_b) -> bool:
    """Whether two tuples of initializer names hold equal values (scale, zero point)."""
    return all(
        np.array_equal(_initializer(graph, a), _initializer(graph, b))
        for a, b in zip(names_a, names_b)
    )


def _bypass_dequantizers(graph: _Graph, integer, float_tensor, quantization):
    """Readers of DQ(integer) with `quantization` read `float_tensor` (= DQ(Q(float)) exactly)."""
    for dequantize in graph.consumers[integer]:
        if dequantize.op_type != "DequantizeLinear" or not _same_values(
            graph, dequantize.input[1:3], quantization
        ):
            continue
        for reader in graph.consumers[dequantize.output[0]]:
            reader.input[:] = [
                float_tensor if i == dequantize.output[0] else i for i in reader.input
            ]


def float_input(model) -> list[str]:
    """The int8 graph input -> a float input quantized inside the graph (int8 = pixel - 128).

    tf2onnx reads the int8 input through Transpose (NHWC -> NCHW) and DequantizeLinear. The
    Transpose now moves float pixels and a QuantizeLinear with the DQ's own scale and zero point
    goes right before the DQ: OpenVINO fuses only an adjacent Q/DQ pair into the FakeQuantize
    that makes the first convolution run in u8. Returns the DequantizeLinear nodes now fed so.
    """
    from onnx import TensorProto

    (graph_input,) = model.graph.input
    if graph_input.type.tensor_type.elem_type not in _INTEGER_TYPES:
        return []
    graph = _Graph(model.graph)
    fed = []
    for tensor, dequantize in _dequantizers_through_layout_ops(graph, graph_input.name):
        quantized = graph.unique(f"{tensor}_quantized")
        dequantize.input[0] = quantized
        quantize = _quantize_node(
            graph, tensor, dequantize.input[1], dequantize.input[2], quantized
        )
        _insert_before(model.graph, dequantize, [quantize])
        fed.append(dequantize.name)
    graph_input.type.tensor_type.elem_type = TensorProto.FLOAT
    return fed


def _dequantizers_through_layout_ops(graph: _Graph, name: str):
    """(tensor, DequantizeLinear node) pairs reading `name` directly or via Transpose/Reshape."""
    for consumer in graph.consumers[name]:
        if consumer.op_type == "DequantizeLinear":
            yield name, consumer
        elif consumer.op_type in ("Transpose", "Reshape"):
            yield from _dequantizers_through_layout_ops(graph, consumer.output[0])
        else:
            raise ExportValidationError(
                f"integer tensor {name!r} is read by {consumer.op_type} {consumer.name!r}, "
                "expected DequantizeLinear, Transpose or Reshape"
            )


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

    graph = _Graph(model.graph)
    names = []
    for graph_output in model.graph.output:
        names.append(graph_output.name)
        if graph_output.type.tensor_type.elem_type not in _INTEGER_TYPES:
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
    _remove_dead_nodes(model)
    return names


def _unquantized_source(graph: _Graph, name: str):
    """For t = DequantizeLinear(QuantizeLinear(x)): x; None for any other tensor."""
    dequantize = graph.producer.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = graph.producer.get(dequantize.input[0])
    return (
        quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else None
    )


def float_silus(model) -> list[str]:
    """x * sigmoid(x) on float x: drops the Q/DQ pairs inside each SiLU.

    The int8 file quantizes the convolution's output, the sigmoid's output, then their product.
    OpenVINO fuses a Conv -> Swish -> FakeQuantize chain into one u8 convolution, but with Q/DQ
    pairs inside the SiLU it runs the sigmoid and product as separate nodes that cost as much
    as the convolutions. Only the product's Q/DQ stays (the next layer's input quantization):
    the values differ from the .tflite's by the skipped roundings, about an output step.
    Returns the names of the rewritten Mul nodes.
    """
    graph = _Graph(model.graph)
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for x_name, s_name in (node.input, node.input[::-1]):
            sigmoid = graph.producer.get(_unquantized_source(graph, s_name) or "")
            x = _unquantized_source(graph, x_name)
            if sigmoid is None or sigmoid.op_type != "Sigmoid" or x is None:
                continue
            if sigmoid.input[0] != x_name and _unquantized_source(graph, sigmoid.input[0]) != x:
                continue
            sigmoid.input[0] = x
            node.input[:] = [x, sigmoid.output[0]]
            rewritten.append(node.name)
            break
    _remove_dead_nodes(model)
    return rewritten


def _remove_dead_nodes(model):
    """Drops nodes none of whose outputs reach a graph output."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    used = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)


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

    graph = _Graph(model.graph)
    (graph_input,) = model.graph.input
    rewritten = []
    for _, dequantize in _dequantizers_through_layout_ops(graph, graph_input.name):
        for conv in graph.consumers[dequantize.output[0]]:
            if conv.op_type != "Conv" or not _reads_int8_weights(graph, conv.input[1]):
                continue
            weights_dq = graph.producer[conv.input[1]]
            weights, scale = (_initializer(graph, n) for n in weights_dq.input[:2])
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
    _remove_dead_nodes(model)
    return rewritten


# CPUs without VNNI sum the u8 x s8 products of two consecutive input channels into a
# saturating int16 (vpmaddubsw): a pair sum must stay within +-32767.
_INT16_PAIR_LIMIT = 32767


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

    graph = _Graph(model.graph)
    (graph_input,) = model.graph.input
    rewritten = []
    for conv in [n for n in model.graph.node if n.op_type == "Conv"]:
        weights_dq = graph.producer.get(conv.input[1])
        if (
            weights_dq is None
            or weights_dq.op_type != "DequantizeLinear"
            or weights_dq.input[0] not in graph.initializers
            or _attribute(conv, "group", 1) != 1
            or _reads_tensor(graph, conv.input[0], graph_input.name)
        ):
            continue
        weights, scale = (_initializer(graph, n) for n in weights_dq.input[:2])
        zero_point = (
            _initializer(graph, weights_dq.input[2])
            if len(weights_dq.input) > 2 and weights_dq.input[2]
            else 0
        )
        if (
            weights.dtype != np.int8
            or weights.ndim != 4
            or np.any(zero_point != 0)
            or (scale.ndim == 1 and _attribute(weights_dq, "axis", 1) != 0)
        ):
            continue
        maxima = (input_maxima or {}).get(conv.name)
        maxima = np.full(weights.shape[1], 255.0) if maxima is None else np.asarray(maxima, float)
        fitted, factors = _fit_pairs_to_int16(weights, maxima)
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
        _set_attribute(weights_dq, "axis", 0)
        rewritten.append(conv.name)
    _remove_dead_nodes(model)
    return rewritten


def _fit_pairs_to_int16(weights, maxima):
    """(int8 weights, factor per output channel) with every pair sum within int16, or
    (None, None) when no channel needs it. weights: int8 [O, C, kh, kw]; maxima: [C]."""
    in_channels = weights.shape[1]
    weights = weights.astype(np.float64)
    if in_channels % 2:  # the kernels pad the input channels with zeros
        weights = np.concatenate([weights, np.zeros_like(weights[:, :1])], axis=1)
        maxima = np.append(maxima, 0.0)
    maxima = maxima.reshape(1, -1, 1, 1)

    def worst_pairs(w):  # [O]: the largest same-sign pair sum at the u8 maxima
        products = maxima * w
        positive, negative = np.maximum(products, 0), np.minimum(products, 0)
        return np.maximum(
            (positive[:, 0::2] + positive[:, 1::2]).reshape(len(w), -1).max(1),
            -(negative[:, 0::2] + negative[:, 1::2]).reshape(len(w), -1).min(1),
        )

    loads = worst_pairs(weights)
    if not np.any(loads > _INT16_PAIR_LIMIT):
        return None, None
    fitted, factors = weights.copy(), np.ones(len(weights))
    for o in np.nonzero(loads > _INT16_PAIR_LIMIT)[0]:
        factor = loads[o] / _INT16_PAIR_LIMIT
        while worst_pairs(np.round(weights[o : o + 1] / factor))[0] > _INT16_PAIR_LIMIT:
            factor *= 1.002  # rounding a weight up can push its pair back over
        fitted[o], factors[o] = np.round(weights[o] / factor), factor
    return fitted[:, :in_channels].astype(np.int8), factors


def _attribute(node, name, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_attribute(node, name, value):
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _reads_tensor(graph: _Graph, name: str, source: str) -> bool:
    """Whether `name` is `source` seen through DequantizeLinear/QuantizeLinear/layout ops."""
    while name != source:
        node = graph.producer.get(name)
        if node is None or node.op_type not in (
            "DequantizeLinear",
            "QuantizeLinear",
            "Transpose",
            "Reshape",
        ):
            return False
        name = node.input[0]
    return True


def _activation_quantization(graph: _Graph, name: str):
    """(scale, zero point) arrays of a float tensor on an int8/uint8 grid: a DequantizeLinear
    output, or a float Concat/MaxPool/Resize/layout op of such (their inputs share it)."""
    node = graph.producer.get(name)
    while node is not None and node.op_type in (
        "Concat",
        "MaxPool",
        "Resize",
        "Transpose",
        "Reshape",
    ):
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
        return None
    values = [_initializer(graph, i) if i in graph.initializers else None for i in node.input[1:3]]
    if any(v is None or v.size != 1 for v in values):
        return None
    return values


def u8_input_maxima(model, images) -> dict:
    """{Conv name: u8 maxima [C] of its input channels} over `images`, as OpenVINO feeds them.

    OpenVINO runs an int8 activation q as u8 = q + 128 (a uint8 one as it is). The Conv inputs
    come from onnxruntime without graph optimizations (`_intermediate_values`).
    `images`: float32 [N, H, W, 3] pixels 0..255.
    """
    from onnx import TensorProto

    graph = _Graph(model.graph)
    inputs = {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        quantization = _activation_quantization(graph, conv.input[0])
        if quantization is not None:
            inputs[conv.name] = (conv.input[0], *quantization)
    tensors = list(dict.fromkeys(tensor for tensor, _, _ in inputs.values()))
    maxima = {}
    for values in _intermediate_values(model, tensors, TensorProto.FLOAT, images):
        for tensor, value in values.items():
            channel_max = value.reshape(value.shape[0], value.shape[1], -1).max(axis=(0, 2))
            maxima[tensor] = np.maximum(maxima.get(tensor, channel_max), channel_max)
    result = {}
    for name, (tensor, scale, zero_point) in inputs.items():
        lowest = np.iinfo(zero_point.dtype).min
        u8 = np.round(maxima[tensor] / float(scale)) + int(zero_point) - lowest
        result[name] = np.clip(u8, 0, 255)
    return result


def _intermediate_values(model, tensors, elem_type, images):
    """Yields {tensor: value} per image: `model` (an onnx ModelProto, left as it is) run in
    onnxruntime without graph optimizations (exact Q/DQ semantics), `tensors` (of ONNX type
    `elem_type`) exposed as extra outputs. `images`: float32 [N, H, W, 3] pixels 0..255, fed as
    the model's input type says."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from tfqat.runtime.pixels import quantize_pixels

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, elem_type, None) for t in tensors if t not in outputs
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (model_input,) = session.get_inputs()
    dtype = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8}.get(model_input.type, np.float32)
    for image in quantize_pixels(images, dtype):
        yield dict(zip(tensors, session.run(tensors, {model_input.name: image[None]})))


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


# === Conversion ===


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


# === Validation ===


def check_onnx_int8(model) -> dict:
    """Raises ExportValidationError unless every Conv reads int8 weights through a DQ node.

    Also rejects any Concat still reading integer tensors (OpenVINO cannot compile it).
    `model` is an onnx ModelProto or a path. Returns {"convs", "int8_weight_convs"}.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    graph = _Graph(model.graph)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    problems = [
        f"{node.op_type} {node.name!r}: weights {node.input[1]!r} are not int8 (no "
        "DequantizeLinear of an int8 initializer)"
        for node in convs
        if not _reads_int8_weights(graph, node.input[1])
    ]
    problems += [
        f"Concat {node.name!r} reads integer tensors: OpenVINO's CPU plugin cannot compile it"
        for node in model.graph.node
        if node.op_type == "Concat" and any(graph.is_integer(i) for i in node.input)
    ]
    if not convs:
        problems.append("the graph has no convolution")
    if problems:
        raise ExportValidationError(
            "ONNX file is not int8 where it must be:\n  " + "\n  ".join(problems)
        )
    return {"convs": len(convs), "int8_weight_convs": len(convs)}


def _reads_int8_weights(graph: _Graph, name: str) -> bool:
    node = graph.producer.get(name)
    while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return False
    weights = graph.initializers.get(node.input[0])
    return weights is not None and weights.data_type in _INTEGER_TYPES


def convolution_precisions(compiled) -> dict:
    """{runtime precision: [names]} of the Convolution nodes OpenVINO really runs."""
    by_precision = collections.defaultdict(list)
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            by_precision[info["runtimePrecision"].astype(str)].append(op.get_friendly_name())
    return dict(by_precision)


def check_openvino_int8(compiled, min_fraction: float = 0.95) -> dict:
    """Raises ExportValidationError unless >= min_fraction of the convolutions run in i8/u8.

    `compiled` is an `openvino.CompiledModel` (e.g. `OpenVINORunner(...).compiled`).
    Returns {precision: count}.
    """
    by_precision = convolution_precisions(compiled)
    counts = {p: len(names) for p, names in by_precision.items()}
    total = sum(counts.values())
    integer = counts.get("i8", 0) + counts.get("u8", 0)
    if total == 0 or integer < min_fraction * total:
        floats = [
            f"{name} ({p})"
            for p, names in by_precision.items()
            if p not in ("i8", "u8")
            for name in names
        ]
        raise ExportValidationError(
            f"OpenVINO runs {integer} of {total} convolutions in i8/u8 (< {min_fraction:.0%}); "
            "not integer:\n  " + "\n  ".join(floats or ["(no convolution at all)"])
        )
    return counts


def check_ir_size(int8_xml, float_xml, max_ratio: float = 0.3) -> float:
    """Raises ExportValidationError unless the int8 IR's .bin is <= max_ratio x the float's."""
    sizes = [
        os.path.getsize(os.path.splitext(os.fspath(p))[0] + ".bin") for p in (int8_xml, float_xml)
    ]
    ratio = sizes[0] / sizes[1]
    if ratio > max_ratio:
        raise ExportValidationError(
            f"{int8_xml}: weights {sizes[0]} bytes are {ratio:.2f}x the float IR's {sizes[1]} "
            f"(> {max_ratio}): its weights are not stored in int8"
        )
    return ratio


# === Comparison ===


def parity(runners: dict, images, reference: str = "tflite_int8", steps=None) -> dict:
    """Output differences of each runner against the reference runner, in int8 steps.

    Args:
      runners: {name: callable(images) -> list of float arrays}, same output order (e.g.
        TFLiteRunner, OnnxRunner, OpenVINORunner), including `reference`.
      images: float32 [N, H, W, 3] pixels 0..255.
      steps: {output name: int8 scale of that output} (the .tflite's output scales);
        needs `runners[reference].output_names`.
    Returns {runner name: {output name: {"max", "p99", "mean": |difference| in steps}}},
    without the reference.
    """
    names = list(runners[reference].output_names)
    expected = runners[reference](images)
    report = {}
    for name, runner in runners.items():
        if name == reference:
            continue
        order = getattr(runner, "output_names", names)
        if list(order) != names:
            raise ValueError(f"runner {name!r} outputs {list(order)}, reference {names}")
        report[name] = {
            output: _difference_in_steps(got, want, (steps or {}).get(output, 1.0))
            for output, got, want in zip(names, runner(images), expected)
        }
    return report


def _difference_in_steps(got, want, step) -> dict:
    difference = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) / step
    return {
        "max": round(float(difference.max()), 3),
        "p99": round(float(np.percentile(difference, 99)), 3),
        "mean": round(float(difference.mean()), 4),
    }


def output_steps(tflite_path) -> dict:
    """{output name: scale} of an int8 .tflite's outputs: one int8 step of each output."""
    from tfqat.export.tflite.flatbuffer import inspect_model, output_names

    outputs = inspect_model(tflite_path)["outputs"]
    return dict(zip(output_names(tflite_path), (float(o["scale"]) for o in outputs)))


# === Export ===


def export_intel(
    export_dir, calibration_images, num_threads: int = 2, seven_bit_first_layer: bool = True
) -> dict:
    """Writes and validates the Intel artifacts of a run's export directory.

    Reads export_dir/model_int8.tflite and model_float32.tflite; writes model_int8.onnx,
    openvino/model_int8.xml/.bin and openvino/model_float.xml/.bin; raises
    ExportValidationError when the ONNX convolutions lack int8 weights, OpenVINO runs fewer
    than 95% of the convolutions in i8/u8, or the int8 IR's .bin is over 0.3x the float IR's.
    `calibration_images` (float32 [N, H, W, 3] pixels 0..255, the run's letterboxed train
    images) bound the u8 inputs of `saturation_safe_weights` and measure the parity of ONNX
    and OpenVINO against the .tflite.
    `seven_bit_first_layer`: see `seven_bit_first_convolutions`.

    Returns {"onnx": {...}, "openvino_int8": {...}, "openvino_float": {...},
    "conv_precisions": {precision: count}, "ir_size_ratio", "parity": {...}}.
    """
    from tfqat.runtime.onnx_openvino import OnnxRunner, OpenVINORunner
    from tfqat.runtime.tflite import TFLiteRunner

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
    runners = {
        "tflite_int8": TFLiteRunner(int8_tflite, num_threads=num_threads),
        "onnx_int8": OnnxRunner(onnx_path, num_threads=num_threads),
        "openvino_int8": openvino_int8,
    }
    summary["parity"] = parity(runners, calibration_images, steps=output_steps(int8_tflite))
    return summary


# === Layer-by-layer mismatch report ===


def layer_report(tflite_path, onnx_path, images, top: int = 10) -> dict:
    """Where an ONNX file starts to differ from its .tflite, layer by layer, in int8 steps.

    tf2onnx keeps the .tflite's tensor names, so every int8 activation the two files share is
    compared: the .tflite's (LiteRT, all tensors preserved) against the ONNX file's
    (onnxruntime without graph optimizations: exact Q/DQ semantics, no int8 kernels), in steps
    of that tensor's .tflite scale. Keyed by Keras layer name (TF-MOT's "quant_<layer>").

    Returns {"layers": [{"layer", "tensor", "max", "p99", "mean"}] in the .tflite's tensor
    order, "first_over_one_step": the first of them whose mean difference exceeds one step,
    "worst": the `top` layers with the largest mean difference}.
    """
    tflite_tensors = _tflite_activations(tflite_path, images)
    onnx_tensors = _onnx_activations(onnx_path, images, list(tflite_tensors))
    layers = []
    for name, values in onnx_tensors.items():
        reference, scale = tflite_tensors[name]
        if values.ndim == 4:
            values = values.transpose(0, 2, 3, 1)  # tf2onnx's NCHW -> the .tflite's NHWC
        if values.shape != reference.shape:
            continue
        layers.append(
            {
                "layer": keras_layer_name(name),
                "tensor": name,
                **_difference_in_steps(values, reference, scale),
            }
        )
    first = next((row["layer"] for row in layers if row["mean"] > 1.0), None)
    worst = sorted(layers, key=lambda row: -row["mean"])[:top]
    return {"layers": layers, "first_over_one_step": first, "worst": worst}


def keras_layer_name(tensor_name: str) -> str:
    """The Keras layer behind a .tflite tensor name ("model/quant_c2f_p3_cv1_conv/Conv2D;...")."""
    import re

    match = re.search(r"quant_([^/;:]+)", tensor_name)
    return match.group(1) if match else tensor_name.split(";")[0]


def _tflite_activations(tflite_path, images) -> dict:
    """{tensor name: (dequantized values [N, ...], scale)} of every int8 activation."""
    from ai_edge_litert.interpreter import Interpreter

    from tfqat.runtime.pixels import quantize_pixels

    interpreter = Interpreter(
        model_path=os.fspath(tflite_path), experimental_preserve_all_tensors=True
    )
    interpreter.allocate_tensors()
    (model_input,) = interpreter.get_input_details()
    details = [
        d
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8
        and d["quantization"][0] > 0
        and d["index"] != model_input["index"]
        and len(d["shape"]) >= 2
    ]
    collected = {d["name"]: [] for d in details}
    for image in quantize_pixels(images, np.int8):
        interpreter.set_tensor(model_input["index"], image[None])
        interpreter.invoke()
        for d in details:
            try:
                collected[d["name"]].append(interpreter.get_tensor(d["index"]).copy())
            except ValueError:  # a constant (weights) or a freed tensor
                collected.pop(d["name"], None)
    return {
        d["name"]: (
            (np.concatenate(collected[d["name"]]).astype(np.float32) - d["quantization"][1])
            * d["quantization"][0],
            d["quantization"][0],
        )
        for d in details
        if collected.get(d["name"])
    }


def _onnx_activations(onnx_path, images, names) -> dict:
    """{tensor name: dequantized values} of the ONNX file's int8 tensors named in `names`."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(os.fspath(onnx_path))
    graph = _Graph(model.graph)
    wanted = [
        n for n in names if n in graph.producer and graph.producer[n].op_type == "QuantizeLinear"
    ]
    outputs = {n: [] for n in wanted}
    for values in _intermediate_values(model, wanted, TensorProto.INT8, images):
        for n, value in values.items():
            outputs[n].append(value)
    quantization = {
        n: [_initializer(graph, i).astype(np.float32) for i in graph.producer[n].input[1:3]]
        for n in wanted
    }
    return {
        n: (np.concatenate(o).astype(np.float32) - quantization[n][1]) * quantization[n][0]
        for n, o in outputs.items()
    }


def _initializer(graph: _Graph, name: str) -> np.ndarray:
    """The value of the initializer `name`."""
    from onnx import numpy_helper

    return numpy_helper.to_array(graph.initializers[name])
