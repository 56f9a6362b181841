"""tools/check_arm.py: int8 files on emulated aarch64 and in Arm NN, against x86 LiteRT.

The slow tests run the tool on the smoke recipes' files (trained here with a private dataset
cache, as tests/test_train.py does). The ARM tools it builds from the package registries go to
the tfqat cache ($TFQAT_CACHE_DIR, else ~/.cache/tfqat), as for any user: built once, reused by
later runs. A test skips only when a registry cannot be reached (the tool's exit status 3).
The smoke models' metrics are near 0, so parity is judged by int8 steps there.
"""

import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
CHECK_ARM = os.path.join(TOOLS, "check_arm.py")
RECIPES = {"detection": "configs/smoke_yolo.flags", "pose": "configs/smoke_pose.flags"}
METRICS = {"detection": ("mAP50_95", "mAP50"), "pose": ("AP", "AP50")}
# How far kernel paths that are not bit-exact may drift apart (STACK.md: up to 13-17 int8
# steps, mean 1.2-1.5, on some outputs of the main job's detector).
MAX_STEPS, MAX_MEAN_STEPS = 17, 1.5
NUMBER = r"\d+(?:\.\d+)?"


def _tool(name):
    """A module of tools/ (they import their siblings by name, as when run as scripts)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    return importlib.import_module(name)


def _run_tool(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, CHECK_ARM, *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


# === Building the tools: cache folders, mirror ===


def test_an_interrupted_build_is_never_used(tmp_path):
    arm = _tool("arm_emulation")

    def killed_midway(folder):
        with open(os.path.join(folder, "half_written"), "w") as f:
            f.write("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        arm.cached_folder(str(tmp_path), "root", ["recipe"], killed_midway)
    assert os.listdir(tmp_path / "arm") == []

    def complete(folder):
        with open(os.path.join(folder, "done"), "w") as f:
            f.write("ok")

    built = arm.cached_folder(str(tmp_path), "root", ["recipe"], complete)
    assert os.listdir(built) == ["done"]
    assert arm.cached_folder(str(tmp_path), "root", ["recipe"], killed_midway) == built
    assert arm.cached_folder(str(tmp_path), "root", ["other recipe"], complete) != built


def test_the_temporary_folder_of_a_killed_build_is_removed(tmp_path):
    arm = _tool("arm_emulation")
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    abandoned = tmp_path / "arm" / f".building-{finished.stdout.strip()}-abc"
    abandoned.mkdir(parents=True)
    arm.cached_folder(str(tmp_path), "root", ["recipe"], lambda folder: None)
    assert not abandoned.exists()


def test_debian_mirror_is_read_from_the_machines_apt_sources(tmp_path):
    arm = _tool("arm_emulation")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
    )
    assert arm.debian_mirror(str(tmp_path)) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert arm.debian_mirror(str(tmp_path)) == "http://other.example/debian"
    with pytest.raises(arm.BuildError, match="--debian_mirror"):
        arm.debian_mirror(str(tmp_path / "empty"))


# === Bad input: one line, naming the file or flag, status 2 ===


@pytest.mark.parametrize(
    "content, extension, message",
    [
        (None, ".tflite", "no such file"),
        (b"TFL3", ".txt", "not a .tflite file"),
        (b"not a flatbuffer", ".tflite", "not a .tflite file"),
    ],
)
def test_bad_model_gets_one_line_naming_it(tmp_path, content, extension, message):
    model = tmp_path / f"model{extension}"
    if content is not None:
        model.write_bytes(content)
    result = _run_tool(f"--model={model}")
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[-1]  # one line
    assert f"--model={model}" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


# === The smoke recipes' files ===


def _train_smoke(task, root):
    model_dir = root / task
    env = dict(os.environ, TFQAT_CACHE_DIR=str(root / "dataset_cache"), PYTHONPATH=REPO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tfqat.train",
            f"--flagfile={RECIPES[task]}",
            f"--model_dir={model_dir}",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return model_dir


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("check_arm")
    return {task: _train_smoke(task, root) for task in RECIPES}


@pytest.fixture(scope="module")
def checked(smoke_runs):
    """{task: (run dir, completed tool process, its JSON report)}: one check per smoke file."""
    results = {}
    for task, model_dir in smoke_runs.items():
        json_path = model_dir / "check_arm.json"
        result = _run_tool(f"--model={model_dir}/export/model_int8.tflite", f"--json={json_path}")
        if result.returncode == 3:
            pytest.skip(f"a package registry cannot be reached: {result.stderr.strip()[-500:]}")
        report = json.loads(json_path.read_text()) if json_path.exists() else None
        results[task] = (model_dir, result, report)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RECIPES))
def test_check_passes_and_runs_every_configuration_where_it_says(checked, task):
    _, result, report = checked[task]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report["passed"] and all(c["passed"] for c in report["criteria"])
    rows = report["configurations"]
    assert len(rows) == 3 + 2 * 2 * 3 + 1 and not any("error" in r for r in rows)
    for row in rows:
        emulated = row["cpu"] != "host"
        assert row["machine"] == ("aarch64" if emulated else "x86_64")
        if emulated:  # the CPU model reached the guest: dot product on the A76 only
            assert ("asimddp" in row["cpu_features"]) == (row["cpu"] == "cortex-a76")
        if row["site"] == "litert":
            assert row["runtime"] == "ai_edge_litert 2.3.0"
            assert int(row["numpy"].split(".")[0]) >= 2
            expected = {
                "default": "XNNPACK",
                "without_default_delegates": "builtin optimized",
                "reference": "builtin reference",
            }[row["kernels"]]
            assert row["kernels_run"].startswith(expected)
        if row["site"] == "tflite214":
            assert row["runtime"] == "tflite_runtime 2.14.0" and row["numpy"].startswith("1.")


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RECIPES))
def test_same_kernels_are_bit_exact_across_isas_and_others_close_in_int8_steps(checked, task):
    _, _, report = checked[task]
    rows = {r["label"]: r for r in report["configurations"]}
    for row in rows.values():
        if "compared_with" not in row:
            continue
        reference = rows[row["compared_with"]]
        assert set(row["output_steps"]) == set(report["output_names"])
        worst = max(s["max_steps"] for s in row["output_steps"].values())
        same_kernels = row["kernels_run"] == reference["kernels_run"]
        if (
            row["machine"] == "aarch64"
            and same_kernels
            and ("XNNPACK" in row["kernels_run"] or row["kernels_run"] == "builtin reference")
        ):
            assert worst == 0, row["label"]
            assert row["bit_exact"] and row["expected_bit_exact"]
        for steps in row["output_steps"].values():
            assert steps["max_steps"] <= MAX_STEPS and steps["mean_steps"] <= MAX_MEAN_STEPS
    arm_nn = rows["x86_64 Arm NN CpuRef"]
    assert arm_nn["compared_with"] == "x86_64 LiteRT reference"


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RECIPES))
def test_metrics_are_tfqats_and_within_tolerance(checked, task):
    model_dir, _, report = checked[task]
    baseline = report["configurations"][0]
    assert baseline["label"] == "x86_64 LiteRT default"
    # The smoke val set has 8 images, all of them checked: the x86 XNNPACK metric is the one
    # tfqat's evaluation wrote for the file.
    run_report = json.loads((model_dir / "report.json").read_text())
    tflite_int8 = next(a for a in run_report["artifacts"] if a["name"] == "tflite_int8")
    assert report["images"] == 8
    for name in METRICS[task]:
        assert baseline["metrics"][name] == pytest.approx(tflite_int8["metrics"][name], abs=1e-6)
    for row in report["configurations"]:
        assert set(row["metrics"]) == set(METRICS[task])
        for name, value in row["metrics"].items():
            reference = baseline["metrics"][name]
            assert abs(value - reference) <= max(0.01 * reference, 0.005)


def _figures_in(value, found: set):
    """Every way the report's numbers may be printed, and the numbers inside its strings."""
    if isinstance(value, dict):
        for key, item in value.items():
            _figures_in(key, found)
            _figures_in(item, found)
    elif isinstance(value, list):
        for item in value:
            _figures_in(item, found)
    elif isinstance(value, str):
        found.update(re.findall(NUMBER, value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        for text in (
            str(value),
            f"{value:.4f}",
            f"{value:.3f}",
            f"{abs(value):.4f}",
            f"{value:.0%}",
        ):
            found.update(re.findall(NUMBER, text))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(RECIPES))
def test_json_has_every_printed_figure(checked, task):
    _, result, report = checked[task]
    found = set()
    _figures_in(report, found)
    printed = re.findall(NUMBER, result.stdout)
    assert printed and not [n for n in printed if n not in found]
    for row in report["configurations"]:
        for key in ("kernels_run", "cpu_features", "runtime", "wall_seconds", "seconds"):
            assert key in row, (row["label"], key)


@pytest.mark.slow
def test_a_layer_arm_nn_cannot_run_is_named(tmp_path):
    """Arm NN 20.08's TfLite parser has no REDUCE_MAX: the check names the operator."""
    from tfqat.tf_compat import tf

    arm, check_arm = _tool("arm_emulation"), _tool("check_arm")
    try:
        armnn = arm.build_armnn(_tool("check_arm_val").default_cache_dir(), arm.debian_mirror())
    except arm.RegistryUnreachable as e:
        pytest.skip(f"a package registry cannot be reached: {e}")
    inputs = tf.keras.Input((8, 8, 3), batch_size=1)
    channel_max = tf.keras.layers.Lambda(
        lambda x: tf.reduce_max(x, -1, keepdims=True), name="channel_max"
    )(tf.keras.layers.ReLU()(inputs))
    outputs = tf.keras.layers.Conv2D(2, 1, name="after")(channel_max)  # the max stays inside
    converter = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [np.random.default_rng(i).uniform(0, 4, (1, 8, 8, 3)).astype(np.float32)] for i in range(8)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    model = tmp_path / "reduce_max.tflite"
    model.write_bytes(converter.convert())
    np.save(tmp_path / "inputs.npy", np.zeros((2, 8, 8, 3), np.int8))
    config = next(c for c in check_arm.configurations() if c["site"] == "armnn")
    outputs, info = check_arm.run_configuration(
        config, {"armnn": armnn}, str(model), str(tmp_path / "inputs.npy"), str(tmp_path)
    )
    assert outputs is None
    named = check_arm.name_unsupported_layer(info["error"], str(model))
    assert "REDUCE_MAX" in named and "channel_max" in named
