"""The Android detector file: box encoding, metadata, graph stitching, and MediaPipe on a run."""

import json
import os
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest

from tfqat.export.android.tflite_metadata import (
    LABELS_FILE,
    OUTPUT_METADATA_NAMES,
    TFLITE_METADATA_NAME,
    detector_metadata,
)
from tfqat.models.yolo_spec import make_anchors
from tfqat.postprocess import detection as post
from tfqat.postprocess.center_size import center_size_anchors, decode_center_size, encode_distances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SIZE = (64, 96)
LABELS = ["circle", "square", "star", "ring"]
REG_MAX = 16


def _one_hot_heads(distances, num_classes=2, rng=None):
    """Head tensors whose DFL expectation is `distances` ([A, 4] integers < REG_MAX)."""
    heads, start = [], 0
    for stride in post.STRIDES:
        grid = (INPUT_SIZE[0] // stride, INPUT_SIZE[1] // stride)
        count = grid[0] * grid[1]
        logits = np.full((count, 4, REG_MAX), -50.0, np.float32)
        np.put_along_axis(logits, distances[start : start + count, :, None], 50.0, axis=-1)
        heads += [
            logits.reshape(*grid, 4 * REG_MAX),
            (rng or np.random.default_rng(0)).normal(size=(*grid, num_classes)),
        ]
        start += count
    return heads


def test_center_size_encoding_gives_the_boxes_of_our_numpy_decode():
    anchor_count = len(make_anchors(INPUT_SIZE)[0])
    distances = np.random.default_rng(1).integers(0, REG_MAX, size=(anchor_count, 4))
    boxes, _ = post.decode(_one_hot_heads(distances), INPUT_SIZE, REG_MAX)
    corners = decode_center_size(encode_distances(distances), center_size_anchors(INPUT_SIZE))
    height, width = INPUT_SIZE
    as_xyxy = corners[:, [1, 0, 3, 2]] * np.array([width, height, width, height])
    zero_size = (distances[:, [0, 1]] + distances[:, [2, 3]] == 0).any(axis=1)
    np.testing.assert_allclose(as_xyxy[~zero_size], boxes[0][~zero_size], atol=1e-3)
    # A zero-size box stays a (tiny) box at its anchor, not NaN.
    assert np.isfinite(corners).all()


def _field(table: flatbuffers.table.Table, slot: int):
    offset = table.Offset(4 + 2 * slot)
    return offset and table.Pos + offset


def _string(table, slot) -> str:
    return table.String(_field(table, slot)).decode()


def _tables(table, slot) -> list:
    position = _field(table, slot)
    start, length = table.Vector(position - table.Pos), table.VectorLen(position - table.Pos)
    return [
        flatbuffers.table.Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(length)
    ]


def test_detector_metadata_names_outputs_and_labels_file_as_mediapipe_reads_them():
    data = detector_metadata((64, 96), 0.25, name="n", description="d", version="v")
    assert data[4:8] == b"M001"
    root = flatbuffers.table.Table(
        data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    )
    assert _string(root, 7) == "1.2.0"  # min_parser_version
    (subgraph,) = _tables(root, 3)
    outputs = _tables(subgraph, 3)
    assert [_string(t, 0) for t in outputs] == list(OUTPUT_METADATA_NAMES)
    (labels,) = _tables(outputs[1], 6)
    assert _string(labels, 0) == LABELS_FILE
    (image,) = _tables(subgraph, 2)
    assert _string(image, 0) == "image"


# === Stitching: a tiny int8 "detector" (no training) ===


@pytest.fixture(scope="module")
def tiny_int8_detector():
    """An int8 .tflite with the six YOLO heads at 64x96, 4 classes, tfqat metadata embedded."""
    from tfqat.export import metadata as metadata_lib
    from tfqat.export.tflite import convert as tflite_convert
    from tfqat.runtime import metadata as runtime_metadata
    from tfqat.tf_compat import keras

    layers = keras.layers
    image = keras.Input((*INPUT_SIZE, 3))
    x = layers.Rescaling(1 / 255)(image)
    outputs = []
    for level, stride in zip(("p3", "p4", "p5"), post.STRIDES):
        pooled = layers.AveragePooling2D(stride)(x)
        features = layers.Conv2D(16, 3, padding="same", activation="relu")(pooled)
        outputs += [
            layers.Conv2D(4 * REG_MAX, 1, name=f"box_{level}")(features),
            layers.Conv2D(len(LABELS), 1, name=f"cls_{level}")(features),
        ]
    model = keras.Model(image, outputs)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, *INPUT_SIZE, 3)).astype(np.float32)
    data = tflite_convert.convert_int8(model, [images])
    metadata = {
        "format": runtime_metadata.METADATA_NAME,
        "task": "detection",
        "labels": {"names": LABELS, "category_ids": [3, 7, 8, 9]},
        "input": {"size": list(INPUT_SIZE)},
        "decode": {"strides": list(post.STRIDES), "reg_max": REG_MAX, "score_threshold": 0.25},
    }
    return metadata_lib.embed_metadata(data, metadata), images


@pytest.fixture(scope="module")
def tiny_android(tiny_int8_detector):
    from tfqat.export.android.build import build_android_tflite

    return build_android_tflite(tiny_int8_detector[0])


def test_android_file_is_the_int8_body_plus_our_decode_and_nms(tiny_int8_detector, tiny_android):
    from ai_edge_litert.interpreter import Interpreter

    from tfqat.export.android.build import validate_android
    from tfqat.export.android.tflite_metadata import labels_from_zip
    from tfqat.export.tflite.flatbuffer import inspect_model
    from tfqat.runtime.android import AndroidDetector
    from tfqat.runtime.metadata import tflite_metadata_entries
    from tfqat.runtime.tflite import TFLiteRunner

    int8_model, images = tiny_int8_detector
    android = tiny_android
    report = validate_android(android, int8_model, images)
    assert report["op_counts"]["CUSTOM:TFLite_Detection_PostProcess"] == 1
    info = inspect_model(android)
    assert info["inputs"][0]["dtype"] == "uint8" and info["inputs"][0]["shape"] == [1, 64, 96, 3]
    assert TFLITE_METADATA_NAME in tflite_metadata_entries(android)
    assert labels_from_zip(android) == LABELS

    # The body sees int8 = pixel - 128 exactly: its heads equal the int8 file's, bit for bit.
    pixels = np.round(images[:2])
    reference = TFLiteRunner(int8_model)
    interpreter = Interpreter(model_content=android, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    heads = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    for image, expected in zip(pixels, zip(*reference.raw(pixels))):
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"], image[None].astype(np.uint8)
        )
        interpreter.invoke()
        for name, values in zip(reference.output_names, expected):
            np.testing.assert_array_equal(interpreter.get_tensor(heads[name])[0], values)

    # Its detections are our numpy post-processor's on the int8 file's outputs (as sets: the
    # int8 scores tie often, and the two sort ties differently), boxes clipped to the input.
    height, width = INPUT_SIZE
    for image in pixels:
        ((boxes, scores, labels),) = AndroidDetector(android).detect(image[None])
        decoded_boxes, decoded_scores = post.decode(reference(image[None]), INPUT_SIZE, REG_MAX)
        expected_boxes, *expected = post.nms(
            decoded_boxes[0], decoded_scores[0], max_candidates=10**9
        )
        expected_boxes = np.clip(expected_boxes, 0, [width, height, width, height])
        assert len(scores) == len(expected[0]) > 0 and len(set(labels)) == len(LABELS)
        np.testing.assert_allclose(
            _rows(boxes, scores, labels), _rows(expected_boxes, *expected), atol=2e-3
        )


def test_android_file_detects_every_class_whatever_the_thread_count(
    tiny_int8_detector, tiny_android
):
    # LiteRT's multi-threaded per-class ("regular") NMS skips class `num_threads`; the file
    # uses the op's single-threaded NMS, so 1, 2 and 3 threads give the same detections.
    from tfqat.runtime.android import AndroidDetector

    images = tiny_int8_detector[1]
    found = [
        AndroidDetector(tiny_android, num_threads=n).detect(np.round(images[:1]))[0]
        for n in (1, 2, 3)
    ]
    assert sorted(set(found[0][2].tolist())) == list(range(len(LABELS)))
    for other in found[1:]:
        for a, b in zip(found[0], other):
            np.testing.assert_array_equal(a, b)


def _rows(boxes, scores, labels):
    """Detections as rows (score, label, x1, y1, x2, y2), sorted on rounded values."""
    rows = np.column_stack([scores, labels, boxes]).astype(np.float64)
    keys = np.column_stack([np.round(scores, 4), labels, np.round(boxes)])
    return rows[np.lexsort(keys.T[::-1])]


# === On the smoke recipe's run: the file, MediaPipe's ObjectDetector ===


@pytest.fixture(scope="module")
def smoke_android(tmp_path_factory):
    """The smoke recipe's run with export/model_int8_android.tflite written."""
    from tfqat.data.coco import load_coco
    from tfqat.data.letterbox import letterboxed_batches
    from tfqat.evaluate import report as report_lib
    from tfqat.export.android.build import export_android

    root = tmp_path_factory.mktemp("smoke_android")
    run = root / "run"
    env = dict(os.environ, TFQAT_CACHE_DIR=str(root / "cache"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tfqat.train",
            "--flagfile=configs/smoke_yolo.flags",
            f"--model_dir={run}",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    report = report_lib.load_report(str(run))
    val = load_coco(report["val_annotations"], report["val_images"], "detection")
    images = np.concatenate([b for _, b, _ in letterboxed_batches(val, (64, 64), 8)])
    return export_android(str(run / "export"), images)


@pytest.mark.slow
def test_smoke_run_android_file_has_uint8_input_the_op_four_outputs_and_labels(smoke_android):
    from tfqat.export.android.tflite_metadata import labels_from_zip
    from tfqat.export.tflite.flatbuffer import inspect_model
    from tfqat.runtime.metadata import read_metadata, tflite_metadata_entries

    with open(smoke_android, "rb") as f:
        data = f.read()
    info = inspect_model(data)
    assert [(i["dtype"], i["shape"]) for i in info["inputs"]] == [("uint8", [1, 64, 64, 3])]
    assert info["op_counts"]["CUSTOM:TFLite_Detection_PostProcess"] == 1
    assert [o["dtype"] for o in info["outputs"]] == ["float32"] * 4
    assert TFLITE_METADATA_NAME in tflite_metadata_entries(data)
    metadata = read_metadata(smoke_android)
    assert labels_from_zip(data) == metadata["labels"]["names"] != []
    assert metadata["decode"]["postprocess"] == "in_graph"


def _mediapipe_check(model, *flags):
    """tools/check_mediapipe.py's exit status and JSON; skips if PyPI is unreachable.

    The mediapipe venv is the user's cached one (TFQAT_CACHE_DIR as the caller has it)."""
    summary = os.path.join(os.path.dirname(model), "mediapipe_check.json")
    done = subprocess.run(
        [
            sys.executable,
            "tools/check_mediapipe.py",
            f"--model={model}",
            f"--json={summary}",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode == 2 and "cannot install mediapipe" in done.stderr:
        pytest.skip(f"no mediapipe venv: {done.stderr.strip()}")
    assert done.returncode in (0, 1), done.stderr
    with open(summary) as f:
        return done.returncode, json.load(f)


_READ_WITH_MEDIAPIPE_SCHEMA = """
import json, sys
from mediapipe.tasks.metadata import metadata_schema_py_generated as m
data = open(sys.argv[1], "rb").read()
assert m.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
root = m.ModelMetadataT.InitFromObj(m.ModelMetadata.GetRootAsModelMetadata(data, 0))
(graph,) = root.subgraphMetadata
(image,) = graph.inputTensorMetadata
boxes = graph.outputTensorMetadata[0].content.contentProperties
labels = graph.outputTensorMetadata[1].associatedFiles[0]
print(json.dumps({
    "min_parser_version": root.minParserVersion.decode(),
    "outputs": [t.name.decode() for t in graph.outputTensorMetadata],
    "box_index": [int(i) for i in boxes.index], "box_type": boxes.type,
    "coordinate_type": boxes.coordinateType,
    "color_space": image.content.contentProperties.colorSpace,
    "mean": [float(v) for v in image.processUnits[0].options.mean],
    "std": [float(v) for v in image.processUnits[0].options.std],
    "labels": [labels.name.decode(), labels.type],
    "group": [n.decode() for n in graph.outputTensorGroups[0].tensorNames]}))
"""


@pytest.mark.slow
def test_mediapipe_object_detector_loads_the_file_and_detects(smoke_android, tmp_path):
    from tfqat.data.images import default_cache_dir
    from tfqat.runtime.metadata import tflite_metadata_entries

    # The smoke model is trained for seconds: MediaPipe must run it and find boxes; its mAP
    # against tflite_int8 is what the main job's check is for.
    status, summary = _mediapipe_check(smoke_android, "--min_ratio=0")
    assert status == 0
    assert summary["mediapipe_detections"] > 0 and summary["images"] == 8
    assert 0 <= summary["mediapipe_metrics"]["mAP50_95"] <= 1

    # MediaPipe's own generated schema reads our hand-built metadata buffer as we meant it.
    buffer = tmp_path / "metadata.bin"
    buffer.write_bytes(tflite_metadata_entries(smoke_android)[TFLITE_METADATA_NAME])
    python = os.path.join(default_cache_dir(), "venvs", "mediapipe-1.2.2", "bin", "python")
    done = subprocess.run(
        [python, "-c", _READ_WITH_MEDIAPIPE_SCHEMA, str(buffer)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == {
        "min_parser_version": "1.2.0",
        "outputs": list(OUTPUT_METADATA_NAMES),
        "box_index": [1, 0, 3, 2],
        "box_type": 1,
        "coordinate_type": 0,
        "color_space": 1,
        "mean": [0.0],
        "std": [1.0],
        "labels": [LABELS_FILE, 3],
        "group": ["location", "category", "score"],
    }


@pytest.mark.slow
def test_check_mediapipe_fails_below_the_ratio(smoke_android):
    status, summary = _mediapipe_check(smoke_android, "--min_ratio=1000", "--nolitert")
    assert status == 1 and summary["ratio"] < 1000
