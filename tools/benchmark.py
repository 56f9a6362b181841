"""One table for what a run ships: size, accuracy, latency, CPU time and instructions of every
file in its export/, on every runtime, against float and the peers, measured in one run.

    python tools/benchmark.py --model_dir=DIR [--threads=N] [--rounds=R] [--training]

For every model file of DIR/export/ (tools/benchmark_backends.py says which runtimes run it) and
the peers made here (NNCF post-training INT8 of the float IR on the run's calibration images,
the float IR at f32 and at OpenVINO's default precision):
  * size raw, gzip -9, xz -9 and zstd -19, and the fraction of zeros in its kernels;
  * accuracy: report.json's metric of the file (the peers: evaluated here on the val set);
  * latency of the model alone and of one image end to end (letterbox, quantize, model,
    decode, NMS at score 0.25), median and p90, and process CPU time per image (every thread:
    an energy proxy), every backend's calls interleaved in a new random order each round
    (tfqat.evaluate.timing);
  * OpenVINO images/s with the THROUGHPUT hint;
  * instructions per inference of each .tflite at 1 thread (valgrind callgrind; --nocallgrind
    skips it, about 15-70 s a file);
  * with --training: images/s of the input pipeline and of the float, QAT and PQAT steps.
Writes DIR/benchmark.json, DIR/benchmark.md, DIR/benchmark.png (accuracy against end-to-end
latency) and DIR/benchmark/ (the tables as a TensorBoard text summary). Missing Intel files are
exported first (tfqat.export.openvino.convert.export_intel).
"""

import os
import tempfile
from importlib import metadata as package_metadata

from absl import app, flags

from tfqat import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory (its export/ holds the files).")
flags.DEFINE_integer(
    "threads", None, "Threads of every backend (default: every core).", lower_bound=1
)
flags.DEFINE_integer("rounds", 200, "Interleaved rounds: timed calls per backend.", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed calls per backend first.", lower_bound=0)
flags.DEFINE_integer("calibration_images", 64, "Train images for NNCF's calibration.")
flags.DEFINE_float("throughput_seconds", 2.0, "Seconds per OpenVINO THROUGHPUT measure (x3).")
flags.DEFINE_bool("callgrind", True, "Count instructions per inference of the .tflite files.")
flags.DEFINE_bool("training", False, "Also measure the training side (pipeline, steps).")
flags.mark_flag_as_required("model_dir")

# A sleep after every timed call, inside its CPU-time window (tfqat.evaluate.timing).
SETTLE_SECONDS = 0.005
LIBRARIES = ("ai-edge-litert", "onnxruntime", "openvino", "nncf", "numpy", "tensorflow")


def check_run(model_dir: str):
    """A run whose export/ has its .tflite files (the Intel ones are made if missing)."""
    from tfqat.recipe.checks import run_flags

    run_flags("--model_dir", model_dir)
    for name in ("model_float32.tflite", "model_int8.tflite"):
        path = os.path.join(model_dir, "export", name)
        if not os.path.isfile(path):
            raise cli.InputError(
                f"--model_dir={model_dir}: no {path}; export the run first "
                "(python -m tfqat.export --model_dir=DIR)"
            )


def ensure_intel_files(export_dir, calibration, threads):
    needed = ["model_int8.onnx", "openvino/model_int8.xml", "openvino/model_float.xml"]
    if all(os.path.exists(os.path.join(export_dir, n)) for n in needed):
        return
    from tfqat.export.openvino.convert import export_intel

    print(f"exporting the Intel files into {export_dir} first")
    export_intel(export_dir, calibration, num_threads=threads)


def versions() -> dict:
    """Versions of tfqat, the runtimes and (when it counted) valgrind."""
    import tfqat

    found = {"tfqat": tfqat.__version__}
    for name in LIBRARIES:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    if FLAGS.callgrind:
        import benchmark_callgrind

        from tfqat.data.images import default_cache_dir

        folder = benchmark_callgrind.valgrind_folder(default_cache_dir())
        found["valgrind"] = benchmark_callgrind.valgrind_version(folder)
    return found


def file_row(model_dir, path, metric, instructions=None) -> dict:
    from tfqat.evaluate.artifacts import artifact_bytes, file_kernel_sparsity
    from tfqat.evaluate.report import compressed_sizes

    return {
        "path": os.path.relpath(path, model_dir),
        "size_bytes": compressed_sizes(artifact_bytes(path)),
        "sparsity": round(file_kernel_sparsity(path), 6),
        "metric": metric,
        "instructions_per_inference": instructions,
    }


def instructions(files: dict, pixels) -> dict:
    """{artifact: instructions per inference} of the .tflite files (callgrind, 1 thread)."""
    import benchmark_callgrind
    from tqdm import tqdm

    from tfqat.data.images import default_cache_dir

    folder = benchmark_callgrind.valgrind_folder(default_cache_dir())
    tflite = {name: path for name, path in files.items() if path.endswith(".tflite")}
    return {
        name: benchmark_callgrind.instructions_per_invoke(folder, path, pixels)
        for name, path in tqdm(tflite.items(), desc="callgrind")
    }


def backend_rows(backends, times, rates, metrics) -> list[dict]:
    from tfqat.evaluate.timing import time_summary

    rows = []
    for b in backends:
        row = {
            "artifact": b.artifact,
            "runtime": b.runtime,
            "threads": b.threads,
            "model": time_summary(times[f"{b.label} | model"]),
            "end_to_end": time_summary(times[f"{b.label} | end to end"]),
            "metric": metrics.get((b.artifact, b.runtime), metrics.get(b.artifact)),
        }
        if b.label in rates:
            row["throughput_images_per_s"] = rates[b.label]
        if hasattr(b.runner, "compiled"):
            from tfqat.export.openvino.checks import convolution_precisions

            precisions = convolution_precisions(b.runner.compiled)
            row["convolution_precisions"] = {p: len(n) for p, n in precisions.items()}
        rows.append(row)
    return rows


def timed(backends, pixels, threads) -> tuple[dict, dict]:
    """(interleaved model and end-to-end times of every backend, OpenVINO THROUGHPUT images/s)."""
    from benchmark_backends import throughputs
    from tqdm import tqdm

    from tfqat.evaluate.timing import interleaved_times

    calls = {}
    for b in backends:
        calls[f"{b.label} | model"], calls[f"{b.label} | end to end"] = b.model, b.end_to_end
    with tqdm(total=FLAGS.rounds, desc=f"latency, {len(calls)} calls a round") as bar:
        times = interleaved_times(calls, FLAGS.rounds, FLAGS.warmup, 0, SETTLE_SECONDS, bar.update)
    openvino = sum(b.openvino_model is not None for b in backends)
    with tqdm(total=3 * openvino, desc="OpenVINO throughput") as bar:
        seconds = FLAGS.throughput_seconds
        rates = throughputs(backends, pixels, threads, seconds, 3, 0, bar.update)
    return times, rates


def accuracies(model_dir, task, backends) -> dict:
    """{artifact: report.json's metric} and {(artifact, runtime): metric} of the peers, which
    are evaluated here on the val set."""
    from tqdm import tqdm

    from tfqat.evaluate.report import load_report

    metric = task.primary_metric
    report = load_report(model_dir) or {"artifacts": []}
    metrics = {a["name"]: a["metrics"].get(metric) for a in report["artifacts"]}
    for b in tqdm([b for b in backends if b.peer], desc="peers' accuracy"):
        metrics[(b.artifact, b.runtime)] = round(task.metrics(task.predict(b.runner))[metric], 6)
    return metrics


def file_rows(model_dir, files, nncf, metrics, pixels) -> dict:
    """Size, kernel zeros, accuracy and (callgrind) instructions of every file and of NNCF's IR."""
    import benchmark_backends as bb

    counts = instructions(files, pixels) if FLAGS.callgrind else {}
    rows = {
        name: file_row(model_dir, path, metrics.get(name), counts.get(name))
        for name, path in files.items()
    }
    with tempfile.TemporaryDirectory() as folder:
        nncf_path = bb.saved_ir(nncf, folder)
        rows[bb.NNCF] = file_row(folder, nncf_path, metrics[(bb.NNCF, bb.OPENVINO)])
        rows[bb.NNCF]["path"] = "(nncf.quantize of openvino/model_float.xml, not saved)"
    return rows


def method(threads, calibration_images) -> dict:
    from benchmark_backends import DEPLOYMENT_SCORE_THRESHOLD

    return {
        "description": (
            f"{FLAGS.rounds} interleaved rounds (one call per backend, new random order each "
            f"round) after {FLAGS.warmup} warm-up calls, batch 1, {threads} threads unless the "
            "runtime says 1; OpenVINO PERFORMANCE_HINT=LATENCY, its throughput with THROUGHPUT "
            f"({FLAGS.throughput_seconds} s x 3, median); NNCF calibrated on "
            f"{calibration_images} train images; end to end on the first val image."
        ),
        "rounds": FLAGS.rounds,
        "warmup": FLAGS.warmup,
        "threads": threads,
        "settle_seconds": SETTLE_SECONDS,
        "score_threshold": DEPLOYMENT_SCORE_THRESHOLD,
        "calibration_images": calibration_images,
    }


def measure(model_dir: str, threads: int) -> dict:
    """benchmark.json's content for the run (without "training")."""
    import benchmark_backends as bb
    import benchmark_report

    from tfqat.evaluate.timing import machine
    from tfqat.recipe.run_dir import load_run

    task = load_run(model_dir).task
    export_dir = os.path.join(model_dir, "export")
    calibration = task.preprocessed_images(FLAGS.calibration_images)
    ensure_intel_files(export_dir, calibration, threads)
    files = bb.exported_models(export_dir)
    image, boxes = bb.sample_image(task)
    pixels = task.preprocessed_images(1, split="val")
    nncf = bb.nncf_model(files["openvino_float"], calibration)
    backends = [b for n, p in files.items() for b in bb.file_backends(n, p, threads, image, boxes)]
    backends += bb.peer_backends(files["openvino_float"], nncf, threads, image, boxes)
    times, rates = timed(backends, pixels, threads)
    metrics = accuracies(model_dir, task, backends)
    files_table = file_rows(model_dir, files, nncf, metrics, pixels)
    rows = backend_rows(backends, times, rates, metrics)
    benchmark_report.add_ratios(rows, files_table)
    default_float = next(b for b in backends if b.artifact == "openvino_float" and not b.peer)
    precision = default_float.runner.compiled.get_property("INFERENCE_PRECISION_HINT")
    return {
        "model_dir": os.path.abspath(model_dir),
        "task": task.name,
        "metric": task.primary_metric,
        "machine": machine(),
        "versions": versions(),
        "method": method(threads, int(len(calibration))),
        "default_float_precision": precision.get_type_name(),
        "files": files_table,
        "backends": rows,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_run(FLAGS.model_dir)
    import benchmark_report

    threads = FLAGS.threads or len(os.sched_getaffinity(0))
    result = measure(FLAGS.model_dir, threads)
    if FLAGS.training:
        from benchmark_training import training_figures

        result["training"] = training_figures(FLAGS.model_dir)
    print(benchmark_report.write_outputs(FLAGS.model_dir, result))


if __name__ == "__main__":
    cli.run(main)
