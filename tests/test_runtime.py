"""Deployment: metadata in and next to exported files, tfqat.runtime, tools/predict.py.

The runtime must give what evaluation gives (same crop / letterbox, same decoders), import no
TensorFlow, and run in a device install: `pip install --no-deps` tfqat plus numpy, pillow,
absl-py and the file's runtime (ai-edge-litert, or tflite-runtime 2.14 on older images).
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tfqat import runtime
from tfqat.data.coco import load_coco
from tfqat.data.images import decode_image
from tfqat.data.synthetic import ensure_synthetic
from tfqat.export import metadata as metadata_lib
from tfqat.runtime import metadata as runtime_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "tools", "predict.py")
BLOCK_TENSORFLOW = "sys.modules['tensorflow'] = None  # any import of it fails\n"
RECIPE = "--task={task}\n--model_size=tiny\n"


@functools.cache
def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _datasets(task, input_size):
    paths = ensure_synthetic(task, num_train=16, num_val=8, seed=0, image_size=max(input_size))
    return [
        load_coco(paths[f"{split}_annotations"], paths[f"{split}_images"], task)
        for split in ("train", "val")
    ]


def _export(task, model, export_dir):
    """What the export writes for `task`: model_int8.tflite with its metadata, metadata.json.

    The file is post-training quantized (the same converter and ops as the QAT file, without a
    QAT stage) with the task's calibration images.
    """
    from tfqat.export.tflite import convert as tflite_convert

    data = tflite_convert.convert_int8(model, task.preprocessed_images(16))
    metadata = metadata_lib.build_metadata(task, RECIPE.format(task=task.name), data)
    os.makedirs(export_dir, exist_ok=True)
    path = os.path.join(export_dir, "model_int8.tflite")
    with open(path, "wb") as f:
        f.write(metadata_lib.embed_metadata(data, metadata))
    metadata_lib.write_metadata(export_dir, metadata)
    return path, metadata


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    from tfqat.tasks.detection import DetectionConfig, DetectionTask

    task = DetectionTask(
        DetectionConfig(input_size=(64, 64), model_size="femto"), *_datasets("detection", (64, 64))
    )
    export_dir = str(tmp_path_factory.mktemp("detection") / "export")
    return (task, *_export(task, task.build_model(), export_dir))


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    from tfqat.tasks.pose import PoseConfig, PoseTask

    task = PoseTask(PoseConfig(input_size=(64, 32), model_size="n"), *_datasets("pose", (64, 32)))
    export_dir = str(tmp_path_factory.mktemp("pose") / "export")
    return (task, *_export(task, task.build_model(), export_dir))


# === Metadata ===


def test_metadata_describes_the_file(detection):
    task, path, metadata = detection
    assert metadata["task"] == "detection"
    assert metadata["labels"] == {
        "names": task.train_set.category_names,
        "category_ids": task.train_set.category_ids,
    }
    assert metadata["input"]["size"] == [64, 64]
    assert (
        metadata["input"]["dtype"],
        metadata["input"]["scale"],
        metadata["input"]["zero_point"],
    ) == ("int8", 1.0, -128)
    assert metadata["output_names"] == ["box_p3", "cls_p3", "box_p4", "cls_p4", "box_p5", "cls_p5"]
    assert metadata["decode"]["reg_max"] == 16 and metadata["decode"]["strides"] == [8, 16, 32]
    assert metadata["recipe"] == RECIPE.format(task="detection") and metadata["tfqat_version"]
    assert metadata["tflite"]["op_versions"]["CONV_2D"] >= 1
    assert metadata["tflite"]["min_runtime_version"]

    assert runtime_metadata.read_metadata(path) == metadata
    entries = runtime_metadata.tflite_metadata_entries(path)
    assert {"min_runtime_version", runtime_metadata.METADATA_NAME} <= set(entries)


def test_metadata_replaces_its_entry_and_keeps_the_converter_ones(detection):
    _, path, metadata = detection
    with open(path, "rb") as f:
        data = f.read()
    again = metadata_lib.embed_metadata(data, dict(metadata, task="changed"))
    entries = runtime_metadata.tflite_metadata_entries(again)
    assert json.loads(entries[runtime_metadata.METADATA_NAME])["task"] == "changed"
    assert (
        entries["min_runtime_version"]
        == runtime_metadata.tflite_metadata_entries(data)["min_runtime_version"]
    )
    assert len(again) - len(data) < 256  # the buffer was replaced, not added again


def test_metadata_json_serves_onnx_and_openvino_files(detection, tmp_path):
    _, path, metadata = detection
    export_dir = os.path.dirname(path)
    assert runtime_metadata.read_metadata(os.path.join(export_dir, "model_int8.onnx")) == metadata
    openvino_xml = os.path.join(export_dir, "openvino", "model_int8.xml")
    assert runtime_metadata.read_metadata(openvino_xml) == metadata
    with pytest.raises(FileNotFoundError, match="elsewhere.onnx: no tfqat metadata"):
        runtime_metadata.read_metadata(str(tmp_path / "elsewhere.onnx"))


# === Runtime ===


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
def test_uint8_pixels_quantize_as_their_float_values_do(dtype):
    from tfqat.runtime.pixels import quantize_pixels

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    fast = quantize_pixels(pixels, dtype)
    reference = quantize_pixels(pixels.astype(np.float32), dtype)
    assert fast.dtype == reference.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast, reference)


def test_runtime_imports_no_tensorflow():
    code = (
        "import sys\n"
        + BLOCK_TENSORFLOW
        + textwrap.dedent(f"""
        import runpy
        import tfqat.runtime, tfqat.runtime.metadata
        runpy.run_path({PREDICT!r})  # its imports and flag definitions
        frameworks = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_keras", "keras"))
        assert not frameworks, frameworks
    """)
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_detect_gives_what_evaluation_gives(detection):
    """Same letterbox, decode and NMS: the runtime's detections are the evaluation's results."""
    from tfqat.postprocess.detection import detection_results, to_coco_results
    from tfqat.runtime.tflite import TFLiteRunner

    task, path, _ = detection
    # An untrained model's scores are about 1e-4 (the class prior): keep every candidate.
    expected = detection_results(
        TFLiteRunner(path), task.val_set, task.config.input_size, score_threshold=0.0
    )
    predictor = runtime.load(path)
    got = []
    for sample in task.val_set.samples:
        detections = predictor.detect(decode_image(sample.path), score_threshold=0.0)
        assert all(d["name"] == task.val_set.category_names[d["label"]] for d in detections)
        got += to_coco_results(
            sample.image_id,
            [d["box"] for d in detections],
            [d["score"] for d in detections],
            [d["label"] for d in detections],
            task.val_set.category_ids,
        )
    assert len(got) == len(expected) > 0
    assert got == expected


def test_keypoints_give_what_evaluation_gives(pose):
    """Same crop of each GT person box and the same decoder as the pose task's evaluation."""
    from tfqat.postprocess.pose import to_coco_results
    from tfqat.runtime.tflite import TFLiteRunner

    task, path, metadata = pose
    expected = task.predict(TFLiteRunner(path))  # val persons, image by image, box by box
    predictor = runtime.load(path)
    assert metadata["decode"]["keypoint_names"] == task.train_set.keypoint_names
    got = []
    for sample in task.val_set.samples:
        for person in predictor.keypoints(decode_image(sample.path), sample.boxes):
            assert person["keypoints"].shape == (len(task.train_set.keypoint_names), 3)
            got.append(to_coco_results(sample.image_id, person["keypoints"]))
            assert person["score"] == got[-1]["score"]
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected):
        assert mine["image_id"] == theirs["image_id"]
        # Crop matrices from float32 (evaluation) and float64 boxes differ in the last bits.
        np.testing.assert_allclose(mine["keypoints"], theirs["keypoints"], atol=2e-3)
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def _run_predict(python, model, image, output, *flags, block_tensorflow=False):
    """tools/predict.py with `python`, from a folder where the repo's tfqat is not importable."""
    argv = [PREDICT, f"--model={model}", f"--image={image}", f"--output={output}", *flags]
    code = "\n".join(
        [
            "import runpy, sys",
            BLOCK_TENSORFLOW if block_tensorflow else "",
            f"sys.argv = {argv!r}",
            f"runpy.run_path({PREDICT!r}, run_name='__main__')",
        ]
    )
    result = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(output)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def _assert_drawn(image_path, png_path):
    """The PNG is the image, with something drawn on it."""
    original = decode_image(image_path)
    drawn = np.asarray(Image.open(png_path).convert("RGB"))
    assert drawn.shape == original.shape
    assert np.count_nonzero(np.any(drawn != original, axis=-1)) > 0


def test_predict_draws_detections_without_tensorflow(detection, tmp_path):
    task, path, _ = detection
    image = task.val_set.samples[0].path
    output = str(tmp_path / "detections.png")
    results = _run_predict(
        sys.executable, path, image, output, "--score_threshold=0", block_tensorflow=True
    )
    assert results and {"box", "score", "label", "name", "category_id"} <= set(results[0])
    _assert_drawn(image, output)


def test_predict_draws_skeletons_for_given_boxes(pose, tmp_path):
    task, path, _ = pose
    sample = next(s for s in task.val_set.samples if len(s.boxes))
    boxes = ";".join(",".join(f"{v:.1f}" for v in box) for box in sample.boxes)
    output = str(tmp_path / "people.png")
    results = _run_predict(
        sys.executable,
        path,
        sample.path,
        output,
        f"--boxes={boxes}",
        "--score_threshold=0",
        block_tensorflow=True,
    )
    assert len(results) == len(sample.boxes)
    assert np.asarray(results[0]["keypoints"]).shape == (len(task.train_set.keypoint_names), 3)
    _assert_drawn(sample.path, output)


# === Device installs (slow: each builds a venv) ===


def _device_venv(tmp_path, requirements):
    tool = _load_tool("check_tflite_runtime_214")
    try:
        wheel = tool.build_wheel(str(tmp_path / "wheel"))
        return tool, tool.make_device_venv(str(tmp_path / "venv"), requirements, wheel)
    except tool.PipUnavailable as e:
        pytest.skip(f"pip cannot install the device packages (no package index?): {e}")


@pytest.mark.slow
def test_device_install_predicts_without_tensorflow(detection, tmp_path):
    """README's device install: tfqat --no-deps + numpy, pillow, absl-py, ai-edge-litert."""
    task, path, _ = detection
    tool, python = _device_venv(
        tmp_path, [*_load_tool("check_tflite_runtime_214").DEVICE_BASE, "ai-edge-litert"]
    )
    del tool
    probe = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    where = subprocess.run(
        [python, "-c", "import tfqat; print(tfqat.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(tmp_path / "venv"))  # the installed wheel, not the repo
    image = task.val_set.samples[0].path
    output = str(tmp_path / "device.png")
    results = _run_predict(python, path, image, output, "--score_threshold=0")
    assert results
    _assert_drawn(image, output)


@pytest.mark.slow
def test_tflite_runtime_214_runs_the_int8_file(detection, tmp_path):
    """tflite-runtime 2.14 (numpy<2): loads the file, same integer arithmetic, predict works."""
    task, path, _ = detection
    tool, python = _device_venv(tmp_path, _load_tool("check_tflite_runtime_214").TFLITE_RUNTIME_214)
    images = [s.path for s in task.val_set.samples[:4]]
    report = tool.compare_in_venv(python, path, images)
    assert report["ok"], json.dumps(report, indent=1)
    assert report["old_runtime"].startswith("tflite-runtime 2.14.0")
    assert all(o["reference_kernels_between_runtimes"] == 0 for o in report["outputs"])
    output = str(tmp_path / "old_runtime.png")
    assert _run_predict(python, path, images[0], output, "--score_threshold=0")
    _assert_drawn(images[0], output)
