"""Fixtures and helpers shared by the test modules.

Helpers that build things (`small_detector`, `textured_images`, ...) are plain functions that
test modules import (`from conftest import small_detector`); pytest puts tests/ on sys.path.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfqat.models.activations import ACTIVATIONS
from tfqat.models.layers import c2f, conv_bn_act, sppf
from tfqat.optimize import qat, ranges
from tfqat.tf_compat import keras

layers = keras.layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(flagfile: str, model_dir, *flags) -> list[str]:
    """`python -m tfqat.train --flagfile=configs/<flagfile> --model_dir=<model_dir> <flags>`."""
    return [
        sys.executable,
        "-m",
        "tfqat.train",
        f"--flagfile=configs/{flagfile}",
        f"--model_dir={model_dir}",
        *flags,
    ]


def run_recipe(flagfile: str, model_dir, cache, *flags) -> dict:
    """`python -m tfqat.train --flagfile=configs/<flagfile>` in a subprocess, with a private
    dataset cache; returns the run's report.json."""
    env = dict(os.environ, TFQAT_CACHE_DIR=str(cache))
    command = train_command(flagfile, model_dir, *flags)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    # A crash's faulthandler dump ends with a long list of extension modules: left out.
    stderr = "".join(
        line for line in result.stderr.splitlines(True) if not line.startswith("Extension modules")
    )
    assert result.returncode == 0, (
        f"{' '.join(command)}: exit {result.returncode}\n{stderr[-4000:]}"
    )
    return json.loads((model_dir / "report.json").read_text())


def tensorboard_runs(model_dir) -> dict:
    """{run folder ("train/float", ...): {tag: [steps]}} of every event file under model_dir."""
    from tfqat.tf_compat import tf

    runs = {}
    for folder, _, files in os.walk(model_dir):
        for name in files:
            if name.startswith("events"):
                tags = runs.setdefault(os.path.relpath(folder, model_dir), {})
                for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    for value in event.summary.value:
                        tags.setdefault(value.tag, []).append(event.step)
    return runs


def assert_one_tensorboard_run_per_stage(model_dir, stages):
    """train/<stage> and validation/<stage> for each report.json stage, nothing else; each
    stage's loss curve ends at its own step count, its validation at the same step."""
    runs = tensorboard_runs(model_dir)
    names = [stage["name"] for stage in stages]
    assert sorted(runs) == sorted(
        f"{kind}/{name}" for kind in ("train", "validation") for name in names
    )
    for stage in stages:
        assert max(runs[f"train/{stage['name']}"]["loss/total"]) == stage["steps"]
        metrics = [t for t in runs[f"validation/{stage['name']}"] if t.startswith("metrics/")]
        assert metrics and all(
            max(runs[f"validation/{stage['name']}"][t]) == stage["steps"] for t in metrics
        )


def assert_verdict_ends_the_report(model_dir, report, metric):
    """report.json has the verdict (QAT vs PTQ) on `metric`; report.md ends with its line."""
    from tfqat.evaluate.verdict import verdict_line

    verdict = report["verdict"]
    assert verdict["metric"] == metric
    rows = {a["name"]: a["metrics"][metric] for a in report["artifacts"]}
    assert (verdict["float"], verdict["qat"], verdict["ptq"]) == tuple(
        rows[name] for name in ("keras_float", "tflite_int8", "tflite_int8_ptq")
    )
    line = (model_dir / "report.md").read_text().splitlines()[-1]
    assert line.startswith(f"Verdict ({metric}): ") and line == verdict_line(verdict)


@pytest.fixture(scope="session")
def smoke_yolo_run(tmp_path_factory):
    """The detector smoke recipe (float, QAT, every export), run once per session."""
    root = tmp_path_factory.mktemp("smoke_yolo")
    run_recipe("smoke_yolo.flags", root / "run", root / "cache")
    return root / "run"


# The smoke recipe's prune + PQAT sequence (slow tests only).
PQAT_FLAGS = ("--stages=float,prune,pqat", "--prune_epochs=2")


@pytest.fixture(scope="session")
def smoke_pqat_run(tmp_path_factory):
    """The detector smoke recipe with float, prune and PQAT, run once per session."""
    root = tmp_path_factory.mktemp("smoke_pqat")
    run_recipe("smoke_yolo.flags", root / "run", root / "cache", *PQAT_FLAGS)
    return root / "run"


@pytest.fixture(scope="session")
def smoke_pose_run(tmp_path_factory):
    """The pose smoke recipe, run once per session."""
    root = tmp_path_factory.mktemp("smoke_pose")
    run_recipe("smoke_pose.flags", root / "run", root / "cache")
    return root / "run"


def small_split(root, split, images=2):
    """A valid COCO detection split: `images` 32x32 PNGs and one box on each."""
    folder = root / "images" / split
    folder.mkdir(parents=True)
    records, boxes = [], []
    for i in range(1, images + 1):
        Image.new("RGB", (32, 32), (i * 40, 90, 30)).save(folder / f"{i}.png")
        records.append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 32})
        boxes.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10]})
    data = {"images": records, "annotations": boxes, "categories": [{"id": 1, "name": "a"}]}
    annotations = root / f"{split}.json"
    annotations.write_text(json.dumps(data))
    return str(annotations), str(folder)


def textured_images(n, size=64, seed=0):
    """Blocky colour images with noise, pixels 0..255, with both extremes present."""
    rs = np.random.RandomState(seed)
    low = rs.uniform(0, 255, (n, 8, 8, 3))
    images = np.kron(low, np.ones((1, size // 8, size // 8, 1)))
    images += rs.normal(0, 20, images.shape)
    images[:, :2], images[:, -2:] = 0.0, 255.0
    return np.clip(images, 0, 255).astype(np.float32)


def init_batchnorm(model, images):
    """BatchNorm moving statistics from one batch, so a random net has sane activations.

    At initialisation the moving statistics are (0, 1) while the stem sees pixels 0..255: every
    activation saturates and the outputs barely depend on the image.
    """
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(images, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def small_detector(activation="relu6", num_classes=3):
    """A shallow net from the detector's own blocks (stem, C2f, SPPF, upsample, concat, heads)."""
    keras.utils.set_random_seed(0)
    act = ACTIVATIONS[activation]
    image = keras.Input((64, 64, 3), name="image")
    x = conv_bn_act(image, 16, 3, 2, "stem", act)
    x = conv_bn_act(x, 32, 3, 2, "down", act)
    x = c2f(x, 32, 1, True, "c2f", act)
    x = sppf(x, 32, "sppf", act)
    x = layers.UpSampling2D(2, name="up")(x)
    x = layers.Concatenate(name="cat")([x, conv_bn_act(image, 32, 3, 2, "side", act)])
    box = layers.Conv2D(16, 1, name="box_p3")(conv_bn_act(x, 16, 3, 1, "box_cv", act))
    cls = layers.Conv2D(num_classes, 1, name="cls_p3")(conv_bn_act(x, 16, 3, 1, "cls_cv", act))
    return keras.Model(image, [box, cls], name=f"small_{activation}")


def quantize_ready(model, images, scheme="default"):
    """QAT model after one training-mode pass and a range calibration."""
    qat_model = qat.quantize(model, scheme)
    qat_model(images[:4], training=True)
    ranges.calibrate(qat_model, model, images)
    return qat_model
