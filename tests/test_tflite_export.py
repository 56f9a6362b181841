"""TFLite export: naming and order, the runner, the int8 validator and what it rejects."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import init_batchnorm, quantize_ready, small_detector, textured_images

from tfqat.export.errors import ExportValidationError
from tfqat.export.tflite import convert as tflite_convert
from tfqat.export.tflite.flatbuffer import inspect_model, output_names, set_io_names
from tfqat.export.tflite.validate import validate_int8
from tfqat.fileio import atomic_write
from tfqat.models.yolo import build_yolo
from tfqat.runtime.tflite import TFLiteRunner
from tfqat.tf_compat import keras, tf

layers = keras.layers


@pytest.fixture(scope="module")
def images():
    return textured_images(16)


@pytest.fixture(scope="module")
def float_model(images):
    model = small_detector("relu6")
    init_batchnorm(model, images)
    return model


@pytest.fixture(scope="module")
def qat_model(float_model, images):
    return quantize_ready(float_model, images)


@pytest.fixture(scope="module")
def int8_file(qat_model, images):
    return tflite_convert.convert_int8(qat_model, images)


def test_names_order_and_signature(int8_file, qat_model, images):
    assert output_names(int8_file) == ["box_p3", "cls_p3"]  # Keras order, no "quant_"
    info = inspect_model(int8_file)
    assert [t["name"] for t in info["inputs"]] == ["image"]
    assert [t["name"] for t in info["outputs"]] == ["box_p3", "cls_p3"]
    runner = TFLiteRunner(int8_file)
    assert runner.interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": ["box_p3", "cls_p3"]}
    }
    outputs = runner(images[:3])
    assert [o.shape for o in outputs] == [(3, 32, 32, 16), (3, 32, 32, 3)]
    assert all(o.dtype == np.float32 for o in outputs)
    raw = runner.raw(images[:3])
    assert all(r.dtype == np.int8 for r in raw)

    reordered = TFLiteRunner(int8_file, output_order=("cls_p3", "box_p3"))
    np.testing.assert_array_equal(reordered(images[:3])[0], outputs[1])
    with pytest.raises(ValueError, match="output_order"):
        TFLiteRunner(int8_file, output_order=("cls_p3", "box_p9"))

    # Files from other converters: signature names with TF-MOT's prefix.
    renamed = set_io_names(int8_file, ["image"], ["quant_box_p3", "quant_cls_p3"])
    assert output_names(renamed) == ["box_p3", "cls_p3"]
    np.testing.assert_array_equal(TFLiteRunner(renamed)(images[:1])[1], outputs[1][:1])


def test_atomic_write(tmp_path, int8_file):
    path = os.path.join(tmp_path, "model_int8.tflite")
    atomic_write(path, int8_file)
    assert os.listdir(tmp_path) == ["model_int8.tflite"]
    with open(path, "rb") as f:
        assert f.read() == int8_file
    assert output_names(path) == ["box_p3", "cls_p3"]


def test_runtime_module_needs_no_tensorflow(tmp_path, int8_file, images):
    """Load, validate and run an int8 file in a process where TensorFlow cannot be imported."""
    model_path = os.path.join(tmp_path, "m.tflite")
    images_path = os.path.join(tmp_path, "images.npy")
    atomic_write(model_path, int8_file)
    np.save(images_path, images)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None
        sys.modules["tf_keras"] = None
        import numpy as np
        from tfqat.export.tflite.validate import validate_int8
        from tfqat.runtime.tflite import TFLiteRunner
        images = np.load({images_path!r})
        report = validate_int8({model_path!r}, images, score_output_names=("cls_p3",))
        outputs = TFLiteRunner({model_path!r})(images[:2])
        print(report["input"]["scale"], report["input"]["zero_point"], [o.shape for o in outputs])
        loaded = [m for m in sys.modules if m.startswith(("tensorflow", "tf_keras"))]
        print(sorted(m for m in loaded if sys.modules[m]))
        try:
            import tfqat.export.tflite.convert
        except ImportError:
            print("convert needs tensorflow")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "1.0 -128 [(2, 32, 32, 16), (2, 32, 32, 3)]"
    assert lines[1] == "[]"
    assert lines[2] == "convert needs tensorflow"


def test_validator_report(int8_file, images):
    report = validate_int8(int8_file, images, score_output_names=("cls_p3",))
    assert report["input"] == {
        "name": "image",
        "shape": [1, 64, 64, 3],
        "dtype": "int8",
        "scale": 1.0,
        "zero_point": -128,
    }
    assert set(report["op_counts"]) <= {
        "CONV_2D",
        "CONCATENATION",
        "ADD",
        "MAX_POOL_2D",
        "RESIZE_NEAREST_NEIGHBOR",
        "QUANTIZE",
    }
    assert report["op_counts"]["CONV_2D"] == 14
    assert set(report["tensor_types"]) == {"INT8", "INT32"}
    assert report["delegate_nodes"] >= 1  # XNNPACK took the graph
    assert [o["name"] for o in report["outputs"]] == ["box_p3", "cls_p3"]
    assert all(o["distinct_levels"] >= 32 for o in report["outputs"])
    assert report["size_bytes"] == len(int8_file)


def test_rejects_float_outputs(qat_model, images):
    data = tflite_convert._convert(qat_model, images, output_type="float32")
    with pytest.raises(ExportValidationError) as error:
        validate_int8(data, images, score_output_names=("cls_p3",))
    message = str(error.value)
    assert "model output 'box_p3' is FLOAT32" in message
    assert "model output 'cls_p3' is FLOAT32, not INT8 (made by DEQUANTIZE" in message
    assert "DEQUANTIZE does not run an int8 kernel" in message


def test_rejects_float_model(float_model, images):
    data = tflite_convert.convert_float32(float_model)
    runner = TFLiteRunner(data)
    for a, b in zip(runner(images[:2]), float_model(images[:2])):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-3, rtol=1e-4)
    with pytest.raises(ExportValidationError) as error:
        validate_int8(data, images)
    assert "model input 'image' is FLOAT32" in str(error.value)
    assert "CONV_2D" in str(error.value)


def _tiny(*middle):
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(image)
    for layer in middle:
        x = layer(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    return keras.Model(image, layers.Conv2D(4, 1, name="cls_p3")(x))


def test_rejects_an_op_left_in_float():
    model = _tiny(layers.Lambda(tf.sin, name="sine"))  # SIN has no int8 kernel
    images = textured_images(4, 32)
    data = tflite_convert._convert(
        model, images, supported_ops=("TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS")
    )
    with pytest.raises(ExportValidationError) as error:
        validate_int8(data, images, score_output_names=None)
    message = str(error.value)
    assert "SIN (op #" in message and "does not run an int8 kernel" in message
    assert "float tensor 'model" in message and "sine" in message


@pytest.mark.parametrize("factor", [1e37, np.inf])
def test_rejects_a_diverged_model(factor):
    """A diverged model (absurd weights). x1e37: the converter makes an "int8" file with an
    infinite scale, which XNNPACK refuses (the plain kernels would run it). Infinite weights:
    the converter, although told INT8-only with int8 outputs, leaves convolutions in float."""
    model = _tiny()
    model.get_layer("c2").kernel.assign(model.get_layer("c2").kernel * factor)
    images = textured_images(4, 32)
    data = tflite_convert.convert_int8(model, images)
    with pytest.raises(ExportValidationError) as error:
        validate_int8(data, images, score_output_names=None)
    message = str(error.value)
    if factor == 1e37:
        assert "XNNPACK" in message and "failed to prepare" in message
    else:
        assert "model output 'cls_p3' is FLOAT32" in message
        assert "CONV_2D does not run an int8 kernel" in message


def test_rejects_collapsed_outputs(images):
    model = small_detector("relu6")
    init_batchnorm(model, images)
    model.get_layer("cls_p3").kernel.assign(tf.zeros_like(model.get_layer("cls_p3").kernel))
    data = tflite_convert.convert_int8(model, images)  # post-training quantization
    with pytest.raises(ExportValidationError) as error:
        validate_int8(data, images, score_output_names=("cls_p3",))
    message = str(error.value)
    assert "output 'cls_p3' uses 1 distinct int8 levels" in message
    assert "score output 'cls_p3' is the single value" in message
    assert "box_p3" not in message


def test_ptq_input_quantization_is_exact(float_model, images):
    dim = np.clip(images, 40, 200)  # calibration images without black or white pixels
    data = tflite_convert.convert_int8(float_model, dim)
    report = validate_int8(data, dim, score_output_names=("cls_p3",))
    assert (report["input"]["scale"], report["input"]["zero_point"]) == (1.0, -128)

    # Without the extreme pixels the converter derives the input range from the images.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tflite_convert._concrete_function(float_model)]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in dim)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    with pytest.raises(ExportValidationError, match=r"expected \(1.0, -128\)"):
        validate_int8(converter.convert(), dim, score_output_names=None)


@pytest.mark.slow
def test_pico_256_int8_file_size():
    """Measures the int8 / float32 file size ratio and conversion times (pico, 256 px, 7
    classes)."""
    model = build_yolo(7, "pico", (256, 256), "relu6")
    images = textured_images(8, 256)
    init_batchnorm(model, images)
    started = time.perf_counter()
    float_file = tflite_convert.convert_float32(model)
    float_seconds = time.perf_counter() - started
    started = time.perf_counter()
    int8_file = tflite_convert.convert_int8(model, images)
    int8_seconds = time.perf_counter() - started
    qat_model = quantize_ready(model, images[:4])
    started = time.perf_counter()
    qat_file = tflite_convert.convert_int8(qat_model, images)
    qat_seconds = time.perf_counter() - started
    validate_int8(qat_file, images)
    ratio = len(int8_file) / len(float_file)
    print(
        f"pico 256 px 7 classes: float32 {len(float_file)} B ({float_seconds:.1f} s), "
        f"int8 PTQ {len(int8_file)} B ({int8_seconds:.1f} s), int8 QAT {len(qat_file)} B "
        f"({qat_seconds:.1f} s); int8/float32 {ratio:.3f}"
    )
    assert 0.2 < ratio < 0.35
