"""ONNX graph helpers shared by the OpenVINO rewrites (`rewrites`), the export checks
(`checks`) and the layer-by-layer report (`tfqat.evaluate.parity`).

`Graph` indexes an onnx GraphProto (producers, consumers, initializers); the functions build and
insert Q/DQ nodes, follow a tensor through Q/DQ and layout ops, drop dead nodes, read and set
attributes and initializers, and run a model in onnxruntime to read its intermediate tensors.
"""

import collections

import numpy as np

from tfqat.export.errors import ExportValidationError

INTEGER_TYPES = (2, 3)  # onnx.TensorProto.UINT8, INT8


class Graph:
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
            return self.initializers[name].data_type in INTEGER_TYPES
        return any(
            i.name == name and i.type.tensor_type.elem_type in INTEGER_TYPES
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


def dequantize_node(graph: Graph, tensor, scale, zero_point):
    from onnx import helper

    output = graph.unique(f"{tensor}_dequant")
    return helper.make_node("DequantizeLinear", [tensor, scale, zero_point], [output], name=output)


def quantize_node(graph: Graph, tensor, scale, zero_point, output):
    from onnx import helper

    return helper.make_node(
        "QuantizeLinear",
        [tensor, scale, zero_point],
        [output],
        name=graph.unique(f"{output}_quantize"),
    )


def insert_after(graph_proto, anchor, node):
    graph_proto.node.insert(list(graph_proto.node).index(anchor) + 1, node)


def insert_before(graph_proto, anchor, nodes):
    """Inserts `nodes` just before `anchor`, keeping the node list topologically sorted."""
    index = list(graph_proto.node).index(anchor)
    for offset, node in enumerate(nodes):
        graph_proto.node.insert(index + offset, node)


def remove_dead_nodes(model):
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


def attribute(node, name, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def set_attribute(node, name, value):
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def initializer(graph: Graph, name: str) -> np.ndarray:
    """The value of the initializer `name`."""
    from onnx import numpy_helper

    return numpy_helper.to_array(graph.initializers[name])


def existing_dequantize(graph: Graph, name: str):
    return next((c for c in graph.consumers[name] if c.op_type == "DequantizeLinear"), None)


def same_values(graph: Graph, names_a, names_b) -> bool:
    """Whether two tuples of initializer names hold equal values (scale, zero point)."""
    return all(
        np.array_equal(initializer(graph, a), initializer(graph, b))
        for a, b in zip(names_a, names_b)
    )


def bypass_dequantizers(graph: Graph, integer, float_tensor, quantization):
    """Readers of DQ(integer) with `quantization` read `float_tensor` (= DQ(Q(float)) exactly)."""
    for dequantize in graph.consumers[integer]:
        if dequantize.op_type != "DequantizeLinear" or not same_values(
            graph, dequantize.input[1:3], quantization
        ):
            continue
        for reader in graph.consumers[dequantize.output[0]]:
            reader.input[:] = [
                float_tensor if i == dequantize.output[0] else i for i in reader.input
            ]


def unquantized_source(graph: Graph, name: str):
    """For t = DequantizeLinear(QuantizeLinear(x)): x; None for any other tensor."""
    dequantize = graph.producer.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = graph.producer.get(dequantize.input[0])
    return (
        quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else None
    )


def dequantizers_through_layout_ops(graph: Graph, name: str):
    """(tensor, DequantizeLinear node) pairs reading `name` directly or via Transpose/Reshape."""
    for consumer in graph.consumers[name]:
        if consumer.op_type == "DequantizeLinear":
            yield name, consumer
        elif consumer.op_type in ("Transpose", "Reshape"):
            yield from dequantizers_through_layout_ops(graph, consumer.output[0])
        else:
            raise ExportValidationError(
                f"integer tensor {name!r} is read by {consumer.op_type} {consumer.name!r}, "
                "expected DequantizeLinear, Transpose or Reshape"
            )


def reads_tensor(graph: Graph, name: str, source: str) -> bool:
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


def reads_int8_weights(graph: Graph, name: str) -> bool:
    node = graph.producer.get(name)
    while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear":
        return False
    weights = graph.initializers.get(node.input[0])
    return weights is not None and weights.data_type in INTEGER_TYPES


def activation_quantization(graph: Graph, name: str):
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
    values = [initializer(graph, i) if i in graph.initializers else None for i in node.input[1:3]]
    if any(v is None or v.size != 1 for v in values):
        return None
    return values


def intermediate_values(model, tensors, elem_type, images):
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
