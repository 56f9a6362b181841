"""Intel export: int8 ONNX and OpenVINO IR, what OpenVINO really runs, parity, TF-free runners."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfqat.evaluate.parity import layer_report, output_steps, parity
from tfqat.export.errors import ExportValidationError
from tfqat.export.openvino.checks import check_ir_size, check_onnx_int8, check_openvino_int8
from tfqat.export.openvino.convert import export_intel, onnx_to_openvino
from tfqat.export.openvino.onnx_graph import Graph
from tfqat.export.openvino.pair_saturation import fit_pairs_to_int16
from tfqat.export.openvino.rewrites import rewrite_for_openvino, shared_concat_scales
from tfqat.runtime.onnx_openvino import OnnxRunner, OpenVINORunner

# === A hand-made QDQ graph: fast, no TensorFlow ===


def conv_weights():
    """int8 weights within 7 bits: CPUs without VNNI (this AVX2 host) saturate 8-bit u8 x s8
    pair sums in int16, so full-range weights would make OpenVINO differ from the reference."""
    return np.random.default_rng(0).integers(-63, 64, (4, 3, 3, 3)).astype(np.int8)


def qdq_conv_onnx(path, int8_weights=True):
    """int8 image [1, 8, 8, 3] -> Transpose -> DQ -> Conv (int8 or float weights) -> Q -> out."""
    weights = conv_weights()
    inits = [
        numpy_helper.from_array(np.float32(1.0), "one"),
        numpy_helper.from_array(np.int8(-128), "pixel_zero"),
        numpy_helper.from_array(np.float32(0.01), "w_scale"),
        numpy_helper.from_array(np.int8(0), "zero"),
        numpy_helper.from_array(np.float32(0.5), "out_scale"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("DequantizeLinear", ["nchw", "one", "pixel_zero"], ["x"]),
    ]
    if int8_weights:
        inits.append(numpy_helper.from_array(weights, "w_int8"))
        nodes.append(helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "zero"], ["w"]))
    else:
        inits.append(numpy_helper.from_array(weights.astype(np.float32) * 0.01, "w"))
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "out_scale", "zero"], ["y_int8"]),
        helper.make_node("Transpose", ["y_int8"], ["out"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("image", TensorProto.INT8, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.INT8, [1, 8, 8, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return model


def reference_conv(images, weights=None, output_step=0.5):
    """What qdq_conv_onnx computes, in numpy; output_step None: no output quantization."""
    if weights is None:
        weights = conv_weights().astype(np.float32) * 0.01
    x = np.pad(np.round(images), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((len(images), 8, 8, 4), np.float64)
    for i in range(3):
        for j in range(3):
            out += x[:, i : i + 8, j : j + 8, :] @ weights[:, :, i, j].T
    if output_step is None:
        return out
    return np.clip(np.round(out / output_step), -128, 127) * output_step


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)


def test_onnx_runner_quantizes_input_loops_batch_and_dequantizes(tmp_path, pixels):
    path = str(tmp_path / "m.onnx")
    qdq_conv_onnx(path)
    runner = OnnxRunner(path, output_quantization={"out": (0.5, 0)})
    assert runner.output_names == ["out"] and runner.batch == 1
    (out,) = runner(pixels)
    assert out.shape == (3, 8, 8, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_conv(pixels), atol=0.5 + 1e-6)
    with pytest.raises(ValueError, match="output_quantization"):
        OnnxRunner(path)(pixels)


def test_rewrite_gives_float_io_and_openvino_runs_the_conv_in_int8(tmp_path, pixels):
    path = str(tmp_path / "m.onnx")
    model = qdq_conv_onnx(path)
    summary = rewrite_for_openvino(model)
    assert summary["float_outputs"] == ["out"] and len(summary["float_input"]) == 1
    onnx.save(model, path)
    assert check_onnx_int8(path) == {"convs": 1, "int8_weight_convs": 1}
    # The first convolution's weights went to 7 bits (scale x2); the output is not rounded.
    seven_bit = np.clip(np.round(conv_weights() / 2), -64, 63).astype(np.float32) * 0.02
    expected = reference_conv(pixels, seven_bit, output_step=None)
    np.testing.assert_allclose(OnnxRunner(path)(pixels)[0], expected, rtol=1e-5, atol=1e-3)
    ir = onnx_to_openvino(path, str(tmp_path / "ov" / "m.xml"))
    assert ir["input_shape"] == [1, 8, 8, 3]
    # f32: on CPUs with AVX512-BF16 or AMX, OpenVINO runs the float tail in bf16 by default.
    runner = OpenVINORunner(ir["xml"], precision_hint="f32")
    assert check_openvino_int8(runner.compiled) == {"u8": 1}
    np.testing.assert_allclose(runner(pixels)[0], expected, rtol=1e-5, atol=1e-3)


def test_validators_name_what_is_not_int8(tmp_path):
    path = str(tmp_path / "float_weights.onnx")
    model = qdq_conv_onnx(path, int8_weights=False)
    with pytest.raises(ExportValidationError, match="Conv 'conv': weights 'w' are not int8"):
        check_onnx_int8(path)
    rewrite_for_openvino(model)
    onnx.save(model, path)
    runner = OpenVINORunner(onnx_to_openvino(path, str(tmp_path / "f.xml"))["xml"])
    with pytest.raises(ExportValidationError, match=r"runs 0 of 1 convolutions in i8/u8"):
        check_openvino_int8(runner.compiled)
    with pytest.raises(ExportValidationError, match="not stored in int8"):
        check_ir_size(tmp_path / "f.xml", tmp_path / "f.xml")


def test_parity_in_int8_steps():
    class Fixed:
        output_names = ["a", "b"]

        def __init__(self, offset):
            self.offset = offset

        def __call__(self, images):
            return [np.zeros((2, 3)) + self.offset, np.ones((2, 1)) * 4]

    report = parity(
        {"tflite_int8": Fixed(0.0), "other": Fixed(0.2)}, None, steps={"a": 0.1, "b": 2.0}
    )
    assert report == {
        "other": {
            "a": {"max": 2.0, "p99": 2.0, "mean": 2.0},
            "b": {"max": 0.0, "p99": 0.0, "mean": 0.0},
        }
    }


def worst_pair_sums(weights, maxima):
    """Per output channel: the largest same-sign sum of two consecutive input channels'
    products (u8 input at `maxima` x int8 weight), what vpmaddubsw adds into an int16."""
    products = maxima.reshape(1, -1, 1, 1) * weights.astype(np.int64)
    if products.shape[1] % 2:
        products = np.concatenate([products, np.zeros_like(products[:, :1])], axis=1)
    positive, negative = np.maximum(products, 0), np.minimum(products, 0)
    pairs = np.maximum(
        positive[:, 0::2] + positive[:, 1::2], -(negative[:, 0::2] + negative[:, 1::2])
    )
    return pairs.reshape(len(weights), -1).max(1)


@pytest.mark.parametrize("in_channels", [6, 5])
def test_saturation_safe_weights_keep_pair_sums_in_int16(in_channels):
    weights = np.random.default_rng(1).integers(-127, 128, (8, in_channels, 3, 3)).astype(np.int8)
    weights[0] //= 4  # a channel that cannot overflow stays as it is
    maxima = np.full(in_channels, 255.0)
    assert worst_pair_sums(weights, maxima)[1:].min() > 32767

    fitted, factors = fit_pairs_to_int16(weights, maxima)
    assert fitted.dtype == np.int8 and fitted.shape == weights.shape
    assert worst_pair_sums(fitted, maxima).max() <= 32767
    assert factors[0] == 1 and np.array_equal(fitted[0], weights[0])
    assert np.all((factors[1:] > 1) & (factors[1:] < 2))  # finer than 7-bit weights (2x)
    # each rescaled channel still means the same weights, to within half its new step
    factors = factors[:, None, None, None]
    assert np.all(np.abs(fitted * factors - weights) <= factors / 2 + 1e-9)
    # inputs that never get that large need nothing
    assert fit_pairs_to_int16(weights, np.full(in_channels, 100.0)) == (None, None)


def test_intel_runtime_imports_no_tensorflow(tmp_path, pixels):
    path = str(tmp_path / "m.onnx")
    qdq_conv_onnx(path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None
        sys.modules["tf_keras"] = None
        import numpy as np
        from tfqat.runtime.onnx_openvino import OnnxRunner
        out = OnnxRunner({path!r}, output_quantization={{"out": (0.5, 0)}})(np.zeros((2, 8, 8, 3)))
        print(out[0].shape, sorted(m for m in sys.modules if m.startswith("tensorflow")
                                   and sys.modules[m]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(2, 8, 8, 4) []"


# === The detector's blocks through the whole export (TensorFlow, tf2onnx, OpenVINO) ===


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from test_qat import init_batchnorm, quantize_ready, small_detector, textured_images

    from tfqat.export.tflite import convert as tflite_convert

    images = textured_images(16)
    float_model = small_detector("relu6")
    init_batchnorm(float_model, images)
    qat_model = quantize_ready(float_model, images)
    export_dir = tmp_path_factory.mktemp("export")
    for name, data in (
        ("model_int8.tflite", tflite_convert.convert_int8(qat_model, images)),
        ("model_float32.tflite", tflite_convert.convert_float32(float_model)),
    ):
        with open(export_dir / name, "wb") as f:
            f.write(data)
    return export_dir, images, export_intel(str(export_dir), images)


@pytest.mark.slow
def test_export_intel_writes_int8_onnx_and_openvino(exported):
    export_dir, _, summary = exported
    for name in (
        "model_int8.onnx",
        "openvino/model_int8.xml",
        "openvino/model_int8.bin",
        "openvino/model_float.xml",
        "openvino/model_float.bin",
    ):
        assert (export_dir / name).exists(), name
    assert sorted(os.listdir(export_dir / "openvino")) == [
        "model_float.bin",
        "model_float.xml",
        "model_int8.bin",
        "model_int8.xml",
    ]
    assert summary["onnx"]["output_names"] == ["box_p3", "cls_p3"]
    assert summary["onnx"]["convs"] == summary["onnx"]["int8_weight_convs"] == 14
    model = onnx.load(str(export_dir / "model_int8.onnx"))
    graph = Graph(model.graph)
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert concats and not any(graph.is_integer(i) for n in concats for i in n.input)
    assert summary["conv_precisions"] == {"u8": 14}
    assert summary["ir_size_ratio"] <= 0.3
    runner = OpenVINORunner(str(export_dir / "openvino" / "model_int8.xml"))
    assert runner.output_names == ["box_p3", "cls_p3"]


@pytest.mark.slow
def test_onnx_and_openvino_match_the_tflite_file(exported):
    """Within a few int8 steps. Float QDQ emulation already differs from TFLite's fixed-point
    kernels (about 1 step on average on this random net), the first convolution has 7-bit
    weights, and this AVX2 host saturates int16 pair sums in the other u8 convolutions."""
    from tfqat.runtime.tflite import TFLiteRunner

    export_dir, images, _ = exported
    int8_tflite = str(export_dir / "model_int8.tflite")
    runners = {
        "tflite_int8": TFLiteRunner(int8_tflite, num_threads=2),
        "onnx_int8": OnnxRunner(str(export_dir / "model_int8.onnx"), num_threads=2),
        "openvino_int8": OpenVINORunner(
            str(export_dir / "openvino" / "model_int8.xml"), num_threads=2
        ),
    }
    report = parity(runners, images, steps=output_steps(int8_tflite))
    for backend in ("onnx_int8", "openvino_int8"):
        for output, difference in report[backend].items():
            assert difference["mean"] <= 3 and difference["p99"] <= 16, (
                backend,
                output,
                difference,
            )


@pytest.mark.slow
def test_float_ir_runs_in_float(exported):
    export_dir, images, _ = exported
    runner = OpenVINORunner(str(export_dir / "openvino" / "model_float.xml"), precision_hint="f32")
    with pytest.raises(ExportValidationError, match="in i8/u8"):
        check_openvino_int8(runner.compiled)
    assert [o.shape for o in runner(images[:2])] == [(2, 32, 32, 16), (2, 32, 32, 3)]


@pytest.mark.slow
def test_layer_report_names_keras_layers(exported):
    export_dir, images, _ = exported
    report = layer_report(
        export_dir / "model_int8.tflite", export_dir / "model_int8.onnx", images[:4]
    )
    layers = [row["layer"] for row in report["layers"]]
    assert {"stem_act", "c2f_m0_add", "sppf_pool0", "box_cv_act"} <= set(layers)
    assert all(row["mean"] <= row["max"] for row in report["layers"])
    assert len(report["worst"]) <= 10


def concat_of_requantized_onnx(ratios):
    """Float x -> one branch per ratio: Q(own scale 0.1) read by a Relu and, requantized at
    ratio x 0.1, by a Concat of all branches (tf2onnx's graph of a C2f branch)."""
    inits = [
        numpy_helper.from_array(np.float32(0.1), "own"),
        numpy_helper.from_array(np.int8(0), "z"),
    ]
    nodes, concat_inputs, outputs = [], [], []
    for i, ratio in enumerate(ratios):
        inits.append(numpy_helper.from_array(np.float32(0.1 * ratio), f"cat_scale{i}"))
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "own", "z"], [f"q{i}"], name=f"q{i}"),
            helper.make_node("DequantizeLinear", [f"q{i}", "own", "z"], [f"d{i}"]),
            helper.make_node("Relu", [f"d{i}"], [f"other{i}"]),
            helper.make_node(
                "QuantizeLinear", [f"d{i}", f"cat_scale{i}", "z"], [f"r{i}"], name=f"requantize{i}"
            ),
        ]
        concat_inputs.append(f"r{i}")
        outputs.append(helper.make_tensor_value_info(f"other{i}", TensorProto.FLOAT, [1, 4]))
    nodes.append(helper.make_node("Concat", concat_inputs, ["cat"], axis=1))
    outputs.append(helper.make_tensor_value_info("cat", TensorProto.INT8, [1, 4 * len(ratios)]))
    graph = helper.make_graph(
        nodes,
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_concat_scale_much_coarser_than_the_tensor_own_is_not_shared():
    model = concat_of_requantized_onnx([1.5, 8.7])  # session 8's failing run had 8.7
    assert shared_concat_scales(model) == ["requantize0"]
    kept = [n.name for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(kept) == ["q0", "q1", "requantize1"]
