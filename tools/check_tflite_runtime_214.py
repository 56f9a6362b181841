"""Checks that a .tflite runs in tflite-runtime 2.14 as it does in ai-edge-litert.

    python tools/check_tflite_runtime_214.py --model=export/model_int8.tflite --images=IMG[,IMG...]
                                             [--venv_dir=DIR] [--output=report.json]

Many Raspberry Pi images pin tflite-runtime 2.14 (with numpy<2). This builds a throwaway venv with
tflite-runtime 2.14.0, numpy<2, pillow, absl-py and tfqat installed `--no-deps` (no TensorFlow,
no LiteRT), runs the file there on the letterboxed images through `tfqat.runtime`, and compares
the raw int8 outputs with ai-edge-litert's here:

  * with TFLite's reference kernels (no delegate) in both: the integer arithmetic the file
    prescribes. These must be identical bit for bit, or the file means something else in 2.14.
  * with each runtime's default kernels (LiteRT 2.3 runs int8 graphs on XNNPACK, 2.14 on its
    builtin optimized kernels). Optimized kernels round some requantizations differently from
    the reference, and the differences add up through the layers; LiteRT's own XNNPACK output
    is several int8 steps away from the reference on some files. The old runtime passes when
    it is no further from the reference than that (or one step, whichever is larger).

Prints (and with --output writes) a JSON report: the runtimes, the file's op versions and the
converter's "min_runtime_version", and per output the largest differences in int8 steps. Exits
1 when the file does not load in 2.14 or an output fails the checks above.

`--venv_dir` reuses (or keeps) the venv; by default it is made in a temporary folder and removed.
The functions here also build the device venvs of tests/test_runtime.py.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from tfqat import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFLITE_RUNTIME_214 = ["tflite-runtime==2.14.0", "numpy<2", "pillow", "absl-py"]
# What tfqat.runtime and tools/predict.py need on a device besides the model's runtime.
DEVICE_BASE = ["numpy", "pillow", "absl-py"]
# What building tfqat's wheel reads besides the package.
_PACKAGE_FILES = ("setup.cfg", "pyproject.toml", "README.md")

FLAGS = flags.FLAGS


class PipUnavailable(RuntimeError):
    """pip could not install the device packages (no network to the package index?)."""


# === Device venvs ===


def build_wheel(wheel_dir: str) -> str:
    """tfqat's wheel, built from a copy of its sources (nothing is written in the repo)."""
    with tempfile.TemporaryDirectory() as source:
        shutil.copytree(
            os.path.join(REPO, "tfqat"),
            os.path.join(source, "tfqat"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for name in _PACKAGE_FILES:
            shutil.copy(os.path.join(REPO, name), source)
        _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, source)
    (wheel,) = [f for f in os.listdir(wheel_dir) if f.startswith("tfqat-") and f.endswith(".whl")]
    return os.path.join(wheel_dir, wheel)


def make_device_venv(venv_dir: str, requirements, tfqat_wheel: str) -> str:
    """A venv with `requirements` and tfqat installed `--no-deps`; returns its python.

    The venv has no pip of its own: this python's pip installs into it (`pip --python`), which
    saves bootstrapping one. Reuses `venv_dir` when it has a python already. Raises
    PipUnavailable with pip's output when an install fails.
    """
    python = os.path.join(venv_dir, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv_dir], check=True)
    install = [sys.executable, "--python", python, "install"]
    _pip(*install, *requirements)
    _pip(*install, "--no-deps", "--force-reinstall", tfqat_wheel)
    return python


def _pip(python: str, *args):
    command = [python, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise PipUnavailable(f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


# === Running the model ===


def raw_outputs(model_path: str, image_paths, reference_kernels=False) -> tuple[str, dict]:
    """(runtime name, {output name: raw outputs [N, ...]}) on the letterboxed images."""
    from tfqat.data.images import decode_image
    from tfqat.data.letterbox import letterbox_image
    from tfqat.runtime.tflite import TFLiteRunner

    backend = TFLiteRunner(model_path, reference_kernels=reference_kernels)
    _, height, width, _ = backend.input_detail["shape"]
    images = [letterbox_image(decode_image(p), height, width)[0] for p in image_paths]
    return backend.runtime_name, dict(zip(backend.output_names, backend.raw(np.stack(images))))


def _runtime_version(python: str) -> str:
    code = "import tflite_runtime, numpy; print(tflite_runtime.__version__, numpy.__version__)"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    runtime_version, numpy_version = result.stdout.split()
    return f"tflite-runtime {runtime_version} (numpy {numpy_version})"


def _outputs_in_venv(python: str, model_path: str, image_paths, reference_kernels: bool):
    """Raw outputs from the venv's python, or (None, its error output) when it fails."""
    with tempfile.TemporaryDirectory() as scratch:
        saved = os.path.join(scratch, "raw.npz")
        command = [
            python,
            os.path.abspath(__file__),
            f"--model={model_path}",
            f"--images={','.join(image_paths)}",
            f"--raw_outputs={saved}",
            f"--reference_kernels={reference_kernels}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            return None, result.stderr[-3000:]
        with np.load(saved) as old:
            return dict(old), ""


def compare_in_venv(python: str, model_path: str, image_paths) -> dict:
    """Runs the model with the venv's python and here; the report described in the module doc."""
    from tfqat.export.tflite.flatbuffer import inspect_model
    from tfqat.runtime.metadata import min_runtime_version

    report = {
        "model": os.path.abspath(model_path),
        "old_runtime": _runtime_version(python),
        "num_images": len(image_paths),
        "op_versions": inspect_model(model_path)["op_versions"],
        "min_runtime_version": min_runtime_version(model_path),
    }
    old, new = {}, {}
    for reference in (True, False):
        old[reference], error = _outputs_in_venv(python, model_path, image_paths, reference)
        if old[reference] is None:
            return dict(report, ok=False, error=error)
        report["new_runtime"], new[reference] = raw_outputs(model_path, image_paths, reference)
    report["outputs"] = [
        _compare(name, old[True].get(name), old[False].get(name), new[True][name], new[False][name])
        for name in new[True]
    ]
    report["ok"] = all(o["ok"] for o in report["outputs"])
    return report


def _compare(name, old_reference, old_default, reference, new_default) -> dict:
    """Largest differences in int8 steps; ok when the old runtime's reference kernels match
    bit for bit and its default kernels are as close to them as the new runtime's are."""
    if any(o is None or o.shape != reference.shape for o in (old_reference, old_default)):
        return {"name": name, "ok": False, "problem": "missing, or another shape, in 2.14"}

    def largest(a, b):
        return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())

    row = {
        "name": name,
        "reference_kernels_between_runtimes": largest(old_reference, reference),
        "old_default_vs_reference": largest(old_default, reference),
        "new_default_vs_reference": largest(new_default, reference),
        "default_between_runtimes": largest(old_default, new_default),
    }
    row["ok"] = row["reference_kernels_between_runtimes"] == 0 and row[
        "old_default_vs_reference"
    ] <= max(1, row["new_default_vs_reference"])
    return row


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model or not FLAGS.images:
        raise app.UsageError("give --model and --images")
    if FLAGS.raw_outputs:
        runtime_name, outputs = raw_outputs(FLAGS.model, FLAGS.images, FLAGS.reference_kernels)
        if runtime_name != "tflite_runtime":
            raise SystemExit(f"worker ran on {runtime_name}, not tflite_runtime")
        np.savez(FLAGS.raw_outputs, **outputs)
        return
    check_inputs(FLAGS.model, FLAGS.images)
    scratch = tempfile.mkdtemp(prefix="tflite_runtime_214_")
    try:
        wheel = build_wheel(os.path.join(scratch, "wheel"))
        python = make_device_venv(
            FLAGS.venv_dir or os.path.join(scratch, "venv"), TFLITE_RUNTIME_214, wheel
        )
        report = compare_in_venv(python, FLAGS.model, FLAGS.images)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if FLAGS.output:
        from tfqat.fileio import atomic_write

        atomic_write(FLAGS.output, text + "\n")
    if not report["ok"]:
        raise SystemExit(
            f"{FLAGS.model}: does not run as in {report['new_runtime']} in "
            f"{report['old_runtime']}; see the report above"
        )


def check_inputs(model_path: str, image_paths):
    """The model loads in LiteRT here and every image decodes, before any venv is built."""
    from tfqat.data.images import decode_image
    from tfqat.runtime.tflite import TFLiteRunner

    if not os.path.isfile(model_path):
        raise cli.InputError(f"--model={model_path}: no such file")
    TFLiteRunner(model_path)  # a ValueError naming the file if LiteRT cannot load it
    for path in image_paths:
        if not os.path.isfile(path):
            raise cli.InputError(f"--images: {path}: no such file")
        try:
            decode_image(path)
        except (OSError, ValueError) as e:
            raise cli.InputError(f"--images: {path} is not an image PIL can decode ({e})") from e


def define_flags():
    """Defined only when run as a program: tests import this file for its venv functions."""
    flags.DEFINE_string("model", None, ".tflite file to check.")
    flags.DEFINE_list("images", None, "Image files to run it on.")
    flags.DEFINE_string("venv_dir", None, "Venv to build or reuse (default: a temporary one).")
    flags.DEFINE_string("output", None, "Also write the JSON report here.")
    flags.DEFINE_string("raw_outputs", None, "Worker mode: run here and write raw outputs (.npz).")
    flags.DEFINE_bool("reference_kernels", False, "Worker mode: TFLite's reference kernels.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
