"""A detection set larger than the memory cache limit streams from disk: it trains, and the
pipeline's peak memory does not grow with the set."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_recipe
from PIL import Image

INPUT = 448  # each decoded image takes 448 x 448 x 3 bytes in the pipeline
SMALL = 100


def _write_set(root, n: int):
    """`n` 64x64 JPEGs of noise, one box each, as a COCO detection set."""
    folder = root / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records, boxes = [], []
    for i in range(1, n + 1):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=80)
        records.append({"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64})
        boxes.append({"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 20]})
    data = {"images": records, "annotations": boxes, "categories": [{"id": 1, "name": "a"}]}
    (root / "train.json").write_text(json.dumps(data))
    return str(root / "train.json"), str(folder)


def _pipeline_peak_rss_mib(tmp_path, n: int) -> float:
    """Peak RSS of tools/benchmark_pipeline.py streaming one epoch of an `n`-image set."""
    annotations, images = _write_set(tmp_path / str(n), n)
    command = [
        sys.executable,
        "tools/benchmark_pipeline.py",
        f"--train_annotations={annotations}",
        f"--train_images={images}",
        "--memory_cache_mb=0",
        f"--input_size={INPUT},{INPUT}",
        "--batch_size=1",  # batches in flight, whose number the autotuner varies, stay small
        "--epochs=1",
        "--batches=2",
        "--noaugment",
        "--notrain_step",
    ]
    env = dict(os.environ, PYTHONPATH=REPO, TFQAT_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "streamed" in result.stdout, result.stdout
    return float(re.search(r"peak RSS (\d+) MiB", result.stdout).group(1))


def test_streamed_pipeline_memory_does_not_grow_with_the_set(tmp_path):
    small = _pipeline_peak_rss_mib(tmp_path, SMALL)
    large = _pipeline_peak_rss_mib(tmp_path, 4 * SMALL)
    # Holding the decoded images would add 3 x SMALL images' bytes (172 MiB) to the larger run.
    held = 3 * SMALL * INPUT * INPUT * 3 / 2**20
    print(f"peak RSS: {small:.0f} MiB ({SMALL} images), {large:.0f} MiB ({4 * SMALL})")
    assert large - small < 0.25 * held, (small, large)


@pytest.mark.slow
def test_a_set_above_the_cache_limit_trains(tmp_path):
    report = run_recipe(
        "smoke_yolo.flags",
        tmp_path / "run",
        tmp_path / "cache",
        "--memory_cache_mb=0",
        "--stages=float",
        "--epochs=1",
    )
    assert report["stages"] == [
        {"name": "float", "steps": 2, "seconds": report["stages"][0]["seconds"]}
    ]
    assert "--memory_cache_mb=0" in (tmp_path / "run" / "flags.txt").read_text()
