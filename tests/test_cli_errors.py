"""Every command line, given a user's mistake, prints one line `<program>: error: ...` and exits
with status 2 (the command line) or 1 (an input it names): no traceback, nothing written. And
evaluating a run's model on another val set leaves every file of the run as it was."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, small_split

from tfqat.data.synthetic import make_detection

TOOLS = os.path.join(REPO, "tools")


def run(*args, cache=None):
    """`python ARGS` from the repository, with a private dataset cache when given."""
    env = dict(os.environ)
    env.pop("TFQAT_TRACEBACK", None)
    if cache is not None:
        env["TFQAT_CACHE_DIR"] = str(cache)
    command = [sys.executable, *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def assert_one_line(result, program, status, fragment):
    """The only stderr line is the error, naming what is wrong; the exit status is `status`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert lines == [lines[0]] and lines[0].startswith(f"{program}: error: "), result.stderr
    assert fragment in lines[0], lines[0]


def file_hashes(folder) -> dict:
    """Relative path -> sha256 of every file under `folder`."""
    hashes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


# === python -m tfqat.train ===


def train(tmp_path, *flags):
    return run(
        "-m",
        "tfqat.train",
        "--flagfile=configs/smoke_yolo.flags",
        f"--model_dir={tmp_path / 'run'}",
        *flags,
        cache=tmp_path / "cache",
    )


@pytest.mark.parametrize(
    "flags, status, fragment",
    [
        (["--model_size=zz"], 2, "--model_size=zz is not a detection model size; use one of"),
        (["--activation=gelu"], 2, "--activation=gelu is not supported; use one of relu6, silu"),
        (["--eval_every=0"], 2, "--eval_every=0 must be >= 1"),
        (["--optimizer=adam"], 2, "flag --optimizer=adam: value should be one of <sgd|adamw>"),
        (["--no_such_flag=1"], 2, "Unknown command line flag 'no_such_flag'"),
        (["--flagfile=configs/missing.flags"], 2, "Unable to open flagfile"),
        (["--init_checkpoint=/nonexistent/ckpt-1"], 1, "--init_checkpoint=/nonexistent/ckpt-1"),
        (["--cpu_replicas=2"], 2, "--cpu_replicas=2 splits the CPU for --strategy=mirrored only"),
        (["--cluster_resolver=slurm"], 2, "--cluster_resolver needs --strategy=multi_worker"),
        (["--collective_timeout=-1"], 2, "--collective_timeout=-1.0 must be >= 0 (0: no limit)"),
        (["--strategy=multi_worker"], 1, "reads the cluster from TF_CONFIG, which is not set"),
        (
            ["--strategy=mirrored", "--cpu_replicas=3"],
            2,
            "--batch_size=8 is the global batch and must be a multiple of the 3 replicas",
        ),
    ],
)
def test_train_flag_mistakes(tmp_path, flags, status, fragment):
    result = train(tmp_path, *flags)
    assert_one_line(result, "tfqat.train", status, fragment)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_an_ema_slower_than_the_stage_stops_before_the_run_directory_is_made(tmp_path):
    """Found once the train set's size is known: after the dataset checks' progress lines."""
    result = train(tmp_path, "--ema_decay=0.9999", "--ema_tau=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tfqat.train: error: --ema_decay=0.9999 with --ema_tau=1: the float")
    assert "(half of it from step 0 of 4 or earlier)" in last, last
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "break_it, fragment",
    [
        (lambda p: open(p["val_annotations"], "w").write("{oops"), "malformed JSON at line 1"),
        (lambda p: os.remove(p["val_annotations"]), "--val_annotations="),
        (lambda p: [os.remove(f.path) for f in os.scandir(p["val_images"])], "holds no image"),
        (lambda p: open(p["train_annotations"], "w").write("[]"), "top level must be a JSON"),
    ],
)
def test_train_dataset_mistakes_are_found_before_any_image_is_decoded(tmp_path, break_it, fragment):
    paths = {}
    for split in ("train", "val"):
        paths[f"{split}_annotations"], paths[f"{split}_images"] = small_split(tmp_path, split)
    break_it(paths)
    result = train(tmp_path, *(f"--{name}={path}" for name, path in paths.items()))
    assert_one_line(result, "tfqat.train", 1, fragment)
    # Nothing written: no run directory, and no image decoded (its verdict would be cached).
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_traceback_is_there_when_asked_for(tmp_path):
    env_run = subprocess.run(
        [sys.executable, "-m", "tfqat.train", "--flagfile=configs/smoke_yolo.flags"]
        + [f"--model_dir={tmp_path / 'run'}", "--eval_every=0"],
        cwd=REPO,
        env=dict(os.environ, TFQAT_TRACEBACK="1"),
        capture_output=True,
        text=True,
    )
    assert env_run.returncode == 2 and "Traceback (most recent call last)" in env_run.stderr
    assert env_run.stderr.strip().splitlines()[-1].startswith("tfqat.train: error: --eval_every")


# === python -m tfqat.evaluate, python -m tfqat.export, tools/ ===


@pytest.fixture(scope="module")
def broken(smoke_yolo_run, tmp_path_factory):
    """Files made from the smoke run's export that no command may take."""
    folder = tmp_path_factory.mktemp("broken")
    data = (smoke_yolo_run / "export" / "model_int8.tflite").read_bytes()
    (folder / "truncated.tflite").write_bytes(data[: len(data) // 2])
    (folder / "cut_at_the_end.tflite").write_bytes(data[:-1000])  # its metadata still reads
    (folder / "plain").mkdir()  # no metadata.json in it nor above it
    plain = data.replace(b"tfqat_metadata", b"other_metadata")
    (folder / "plain" / "model_int8.tflite").write_bytes(plain)
    (folder / "lonely").mkdir()
    for name in ("openvino/model_int8.xml", "metadata.json"):
        source = smoke_yolo_run / "export" / name
        (folder / "lonely" / os.path.basename(name)).write_bytes(source.read_bytes())
    (folder / "not_a_run").mkdir()
    (folder / "picture.png").write_bytes(b"not a model either")
    return folder


@pytest.mark.parametrize(
    "model, fragment",
    [
        ("not_a_run", "is a folder but not a tfqat run (no flags.txt)"),
        ("nowhere", "no such file or directory"),
        ("picture.png", "is not a model file"),
        ("lonely/model_int8.xml", "lonely/model_int8.bin beside it"),
        ("truncated.tflite", "truncated.tflite: not a valid .tflite file"),
        ("cut_at_the_end.tflite", "cut_at_the_end.tflite: ai_edge_litert cannot load it"),
        ("plain/model_int8.tflite", "model_int8.tflite: no tfqat metadata"),
    ],
)
def test_evaluate_model_mistakes(broken, tmp_path, model, fragment):
    output = tmp_path / "report.json"
    result = run("-m", "tfqat.evaluate", f"--model={broken / model}", f"--output={output}")
    assert_one_line(result, "tfqat.evaluate", 1, fragment)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def other_set(tmp_path_factory):
    """Another val set with the smoke detector's categories (another seed)."""
    root = tmp_path_factory.mktemp("other")
    return make_detection(str(root / "set"), num_train=1, num_val=4, seed=1, image_size=64)


def test_evaluate_flag_mistakes(smoke_yolo_run, other_set, tmp_path):
    model = f"--model={smoke_yolo_run / 'export' / 'model_int8.tflite'}"
    other = [f"--val_{k}={other_set[f'val_{k}']}" for k in ("annotations", "images")]
    result = run("-m", "tfqat.evaluate", model, *other)
    assert_one_line(result, "tfqat.evaluate", 2, "give --output=REPORT.json")
    result = run("-m", "tfqat.evaluate", model, *other, f"--output={smoke_yolo_run}/report.json")
    assert_one_line(result, "tfqat.evaluate", 2, "is the run's report of its own val set")
    result = run("-m", "tfqat.evaluate", model, *other, f"--output={smoke_yolo_run}/flags.json")
    assert_one_line(result, "tfqat.evaluate", 2, f"is inside the run {smoke_yolo_run}")
    result = run("-m", "tfqat.evaluate", model, *other, f"--output={tmp_path}/report.md")
    assert_one_line(result, "tfqat.evaluate", 2, "must be a .json file")
    result = run("-m", "tfqat.evaluate", model, other[0])
    assert_one_line(result, "tfqat.evaluate", 2, "--val_annotations and --val_images go together")
    annotations, images = small_split(tmp_path, "val")  # one category, not the model's seven
    output = tmp_path / "out" / "report.json"
    output.parent.mkdir()
    args = (model, f"--val_annotations={annotations}", f"--val_images={images}")
    result = run("-m", "tfqat.evaluate", *args, f"--output={output}")
    assert_one_line(result, "tfqat.evaluate", 1, "its category ids [1] are not the model's")
    assert os.listdir(output.parent) == []


def test_evaluating_on_another_set_leaves_the_run_byte_identical(
    smoke_yolo_run, other_set, tmp_path
):
    from tfqat.postprocess.metrics import coco_metrics

    before = file_hashes(smoke_yolo_run)
    output = tmp_path / "other.json"
    cache = smoke_yolo_run.parent / "cache"
    for model in (smoke_yolo_run / "export" / "model_int8.tflite", smoke_yolo_run):
        result = run(
            "-m",
            "tfqat.evaluate",
            f"--model={model}",
            f"--val_annotations={other_set['val_annotations']}",
            f"--val_images={other_set['val_images']}",
            f"--output={output}",
            cache=cache,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert file_hashes(smoke_yolo_run) == before
    report = json.loads(output.read_text())
    assert report["val_annotations"] == other_set["val_annotations"]
    assert sorted(row["name"] for row in report["artifacts"]) == ["keras_float", "tflite_int8"]
    for row in report["artifacts"]:
        assert row["predictions"] == f"other_predictions/{row['name']}.json"
        results = json.loads((tmp_path / row["predictions"]).read_text())
        metrics = coco_metrics(other_set["val_annotations"], results, "bbox")
        assert metrics["mAP50_95"] == pytest.approx(row["metrics"]["mAP50_95"], abs=1e-6)


def test_a_tflite_copied_out_of_its_run_evaluates_from_its_metadata(smoke_yolo_run, tmp_path):
    copy = tmp_path / "device" / "detector.tflite"
    copy.parent.mkdir()
    copy.write_bytes((smoke_yolo_run / "export" / "model_int8.tflite").read_bytes())
    output = tmp_path / "eval" / "report.json"
    output.parent.mkdir()
    args = ("-m", "tfqat.evaluate", f"--model={copy}")
    assert_one_line(run(*args), "tfqat.evaluate", 2, "a model evaluated outside a run")
    # Its recipe's val set (the smoke run's synthetic one, from the same cache).
    result = run(*args, f"--output={output}", cache=smoke_yolo_run.parent / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(output.read_text())["artifacts"]
    assert (row["name"], row["format"], row["precision"]) == ("detector", "tflite", "int8")
    got = json.loads((output.parent / row["predictions"]).read_text())
    expected = json.loads((smoke_yolo_run / "predictions" / "tflite_int8.json").read_text())
    assert got == expected and len(got) > 0


def test_export_and_tool_mistakes(broken, smoke_yolo_run, tmp_path):
    result = run("-m", "tfqat.export", f"--model_dir={broken / 'not_a_run'}")
    assert_one_line(result, "tfqat.export", 1, "not_a_run is not a tfqat run (no flags.txt)")
    model = smoke_yolo_run / "export" / "model_int8.tflite"
    picture = broken / "picture.png"
    output = tmp_path / "out.png"
    result = run(
        f"{TOOLS}/predict.py", f"--model={model}", f"--image={picture}", f"--output={output}"
    )
    assert_one_line(result, "predict.py", 1, f"--image={picture} is not an image PIL can decode")
    result = run(f"{TOOLS}/predict.py", f"--model={model}", f"--image={picture}")
    assert_one_line(result, "predict.py", 2, "--output must have a value")
    annotations, images = small_split(tmp_path, "val")
    with open(annotations, "w") as f:
        f.write("not json")
    result = run(
        f"{TOOLS}/inspect_dataset.py",
        "--task=detection",
        f"--annotations={annotations}",
        f"--images={images}",
    )
    assert_one_line(result, "inspect_dataset.py", 1, f"{annotations}: malformed JSON")
    result = run(f"{TOOLS}/make_synthetic.py", "--task=detection", f"--out={tmp_path}")
    assert_one_line(result, "make_synthetic.py", 1, "already exists and is not an empty folder")
    pruned = broken / "truncated.tflite"
    result = run(f"{TOOLS}/compare_pruned.py", f"--pruned={pruned}", f"--dense={model}")
    assert_one_line(result, "compare_pruned.py", 1, f"--pruned={pruned}: not a valid .tflite")
    result = run(f"{TOOLS}/compare_ema.py", f"--model_dir={broken / 'not_a_run'}")
    assert_one_line(result, "compare_ema.py", 1, "is not a tfqat run (no flags.txt)")
    result = run(f"{TOOLS}/quantization_breakdown.py", f"--model_dir={broken / 'not_a_run'}")
    assert_one_line(result, "quantization_breakdown.py", 1, "is not a tfqat run (no flags.txt)")
    result = run(f"{TOOLS}/benchmark.py", f"--model_dir={broken / 'not_a_run'}")
    assert_one_line(result, "benchmark.py", 1, "is not a tfqat run (no flags.txt)")
    result = run(f"{TOOLS}/benchmark_pipeline.py", f"--train_annotations={annotations}")
    assert_one_line(result, "benchmark_pipeline.py", 2, "give both --train_annotations and")
    assert not output.exists()
