"""Latency of every exported artifact of a run, on this machine, in one interleaved run.

    python tools/benchmark.py --model_dir=DIR [--threads=2]

Times, with the same number of threads, single-image inference of: the float32 and int8
.tflite files (LiteRT, XNNPACK), the int8 ONNX file (onnxruntime), our OpenVINO INT8 IR, the
Intel peer (NNCF post-training INT8 of export/openvino/model_float.xml, made here from the
run's calibration images: train images letterboxed as the recipe does), and the float IR at
INFERENCE_PRECISION_HINT=f32 and at the plugin's default (bf16 on CPUs with AMX/AVX512-BF16,
f32 elsewhere). Backends take turns call by call for `--rounds` rounds, in a new random order
every round; a backend's latency is its median call, so load from other processes hits all of
them alike. Missing Intel files are exported first (tfqat.export.openvino.convert.export_intel).

Prints a table and the ratios ours/NNCF and ours/f32; writes DIR/benchmark.json.
"""

import json
import os
import platform
import tempfile
import time

import numpy as np
from absl import app, flags

from tfqat import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory (its export/ holds the files).")
flags.DEFINE_integer("threads", 2, "Inference threads of every backend.")
flags.DEFINE_integer("rounds", 400, "Interleaved rounds: timed calls per backend.")
flags.DEFINE_integer("calibration_images", 64, "Train images for NNCF's calibration.")
flags.mark_flag_as_required("model_dir")

OURS, NNCF, F32 = "openvino_int8", "openvino_int8_nncf", "openvino_f32"


def interleaved_latencies(calls: dict, rounds: int, warmup: int = 10, seed: int = 0) -> dict:
    """{name: {"median_ms", "p10_ms"}} of zero-argument callables timed call by call in turns.

    Every round calls each backend once, so a burst of load from another process hits all
    backends alike; the median over rounds is what counts. The order is a new random permutation
    every round (seeded): a call is slower right after another runtime's (OpenVINO's idle threads
    asleep, its caches cold), and with a fixed cyclic order each backend would always follow the
    same one (the OpenVINO IR after onnxruntime: +8%, NNCF's own IR included).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    names = list(calls)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for position in rng.permutation(len(names)):
            name = names[position]
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": round(1e3 * float(np.median(t)), 4),
            "p10_ms": round(1e3 * float(np.percentile(t, 10)), 4),
        }
        for name, t in times.items()
    }


def tflite_call(path, image, threads):
    from tfqat.runtime.pixels import quantize_pixels
    from tfqat.runtime.tflite import TFLiteRunner

    runner = TFLiteRunner(path, num_threads=threads)
    interpreter, detail = runner.interpreter, runner.input_detail
    quantized = quantize_pixels(image, detail["dtype"])

    def call():
        interpreter.set_tensor(detail["index"], quantized)
        interpreter.invoke()

    return call


def prepared_call(runner, image):
    """One inference on an already quantized image: the runtime's cost alone."""
    prepared = runner.quantize(image)
    return lambda: runner.infer(prepared)


def nncf_model(float_xml, calibration):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(float_xml)
    dataset = nncf.Dataset([image[None] for image in calibration])
    return nncf.quantize(model, dataset, subset_size=len(calibration))


def ir_bin_bytes(model) -> int:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(model, os.path.join(tmp, "m.xml"), compress_to_fp16=False)
        return os.path.getsize(os.path.join(tmp, "m.bin"))


def calibration_images(model_dir, count):
    from tfqat.recipe.run_dir import load_run

    return load_run(model_dir).task.preprocessed_images(count)


def ensure_intel_files(export_dir, calibration):
    needed = ["model_int8.onnx", "openvino/model_int8.xml", "openvino/model_float.xml"]
    if all(os.path.exists(os.path.join(export_dir, n)) for n in needed):
        return None
    from tfqat.export.openvino.convert import export_intel

    print(f"exporting the Intel files into {export_dir} first")
    return export_intel(export_dir, calibration, num_threads=FLAGS.threads)


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_run(FLAGS.model_dir)
    from tfqat.export.openvino.checks import convolution_precisions
    from tfqat.runtime.onnx_openvino import OnnxRunner, OpenVINORunner

    export_dir = os.path.join(FLAGS.model_dir, "export")
    calibration = calibration_images(FLAGS.model_dir, FLAGS.calibration_images)
    ensure_intel_files(export_dir, calibration)
    path = {
        name: os.path.join(export_dir, name)
        for name in (
            "model_float32.tflite",
            "model_int8.tflite",
            "model_int8.onnx",
            "openvino/model_int8.xml",
            "openvino/model_float.xml",
        )
    }
    image = calibration[:1]
    threads = FLAGS.threads
    quantized_nncf = nncf_model(path["openvino/model_float.xml"], calibration)
    openvino = {
        OURS: OpenVINORunner(path["openvino/model_int8.xml"], threads),
        NNCF: OpenVINORunner(quantized_nncf, threads),
        F32: OpenVINORunner(path["openvino/model_float.xml"], threads, precision_hint="f32"),
        "openvino_float_default": OpenVINORunner(path["openvino/model_float.xml"], threads),
    }
    calls = {
        "tflite_float32": tflite_call(path["model_float32.tflite"], image, threads),
        "tflite_int8": tflite_call(path["model_int8.tflite"], image, threads),
        "onnx_int8": prepared_call(OnnxRunner(path["model_int8.onnx"], threads), image),
        **{name: prepared_call(runner, image) for name, runner in openvino.items()},
    }
    latencies = interleaved_latencies(calls, FLAGS.rounds)
    sizes = {
        "tflite_float32": os.path.getsize(path["model_float32.tflite"]),
        "tflite_int8": os.path.getsize(path["model_int8.tflite"]),
        "onnx_int8": os.path.getsize(path["model_int8.onnx"]),
        OURS: os.path.getsize(path["openvino/model_int8.xml"][:-4] + ".bin"),
        NNCF: ir_bin_bytes(quantized_nncf),
        F32: os.path.getsize(path["openvino/model_float.xml"][:-4] + ".bin"),
    }
    sizes["openvino_float_default"] = sizes[F32]
    result = {
        "model_dir": os.path.abspath(FLAGS.model_dir),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu": _cpu_name(),
            "threads": threads,
        },
        "method": f"{FLAGS.rounds} interleaved rounds of one call per backend in a random "
        "order, batch 1, median; OpenVINO PERFORMANCE_HINT=LATENCY",
        "calibration_images": int(len(calibration)),
        "default_float_precision": openvino["openvino_float_default"]
        .compiled.get_property("INFERENCE_PRECISION_HINT")
        .get_type_name(),
        "latency_ms": {name: v["median_ms"] for name, v in latencies.items()},
        "latency_p10_ms": {name: v["p10_ms"] for name, v in latencies.items()},
        "size_bytes": sizes,
        "conv_precisions": {
            name: {p: len(n) for p, n in convolution_precisions(r.compiled).items()}
            for name, r in openvino.items()
        },
    }
    median = result["latency_ms"]
    result["ratios"] = {
        "ours_over_nncf": round(median[OURS] / median[NNCF], 3),
        "ours_over_f32": round(median[OURS] / median[F32], 3),
    }
    print(table(result))
    from tfqat.fileio import atomic_write

    atomic_write(os.path.join(FLAGS.model_dir, "benchmark.json"), json.dumps(result, indent=1))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            return next(names)
    except (OSError, StopIteration):
        return platform.machine()


def table(result) -> str:
    lines = [f"{'backend':24s} {'median ms':>10s} {'p10 ms':>8s} {'size bytes':>11s}  convs"]
    for name, ms in result["latency_ms"].items():
        convs = result["conv_precisions"].get(name, "")
        lines.append(
            f"{name:24s} {ms:10.3f} {result['latency_p10_ms'][name]:8.3f} "
            f"{result['size_bytes'].get(name, 0):11d}  {convs}"
        )
    ratios = result["ratios"]
    lines.append(
        f"ours/NNCF {ratios['ours_over_nncf']:.3f}   "
        f"ours/f32 {ratios['ours_over_f32']:.3f}   "
        f"(float default precision: {result['default_float_precision']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
