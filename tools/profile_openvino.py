"""Per-kernel time of a run's int8 IR against NNCF's INT8 of its float IR, on OpenVINO's CPU
plugin: whether the two compile to the same kernels, and whose kernels take longer.

    python tools/profile_openvino.py --model_dir=DIR [--threads=1] [--calls=200]

Both IRs are compiled with PERF_COUNT=YES and the LATENCY hint and called in turn, in a new
random order each round, on the run's first calibration image; each row is one (layer type, kernel)
pair of the compiled graphs: how many layers run it and their summed time per call, median over
the calls. tools/benchmark.py times whole calls; this says where a difference between the two
files comes from.
"""

import collections
import functools
import os
import statistics

from absl import app, flags

from tfqat import cli
from tfqat.evaluate import timing

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory with export/openvino/.")
flags.DEFINE_integer("threads", 1, "OpenVINO inference threads.", lower_bound=1)
flags.DEFINE_integer("calls", 200, "Profiled calls per IR (after 20 untimed).", lower_bound=1)
flags.DEFINE_integer("calibration_images", 64, "Train images for NNCF's calibration.")
flags.mark_flag_as_required("model_dir")

WARMUP_CALLS = 20


def kernel_profiles(models: dict, image, threads: int, calls: int) -> dict:
    """{name: {(layer type, kernel): (layers, median microseconds per call)}} of each of
    `models` compiled for the CPU, called in turn on `image` in a new random order each round
    (tfqat.evaluate.timing.interleaved_times, as tools/benchmark.py), so load from elsewhere
    hits both alike."""
    import openvino as ov

    config = {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    core = ov.Core()
    requests = {
        n: core.compile_model(m, "CPU", config).create_infer_request() for n, m in models.items()
    }
    for request in requests.values():
        for _ in range(WARMUP_CALLS):
            request.infer({0: image})
    samples = {name: collections.defaultdict(list) for name in models}

    def profiled_call(name):
        requests[name].infer({0: image})
        for key, microseconds in kernel_times(requests[name]).items():
            samples[name][key].append(microseconds)

    calls_by_name = {name: functools.partial(profiled_call, name) for name in models}
    timing.interleaved_times(calls_by_name, rounds=calls, warmup=0)
    profiles = {}
    for name, request in requests.items():
        layers = collections.Counter((x.node_type, x.exec_type) for x in request.profiling_info)
        profiles[name] = {k: (layers[k], statistics.median(v)) for k, v in samples[name].items()}
    return profiles


def kernel_times(request) -> collections.Counter:
    """{(layer type, kernel): microseconds} of the request's last call, summed over layers."""
    times = collections.Counter()
    for layer in request.profiling_info:
        times[(layer.node_type, layer.exec_type)] += layer.real_time.total_seconds() * 1e6
    return times


def comparison_markdown(ours: dict, peer: dict, threads: int, calls: int) -> str:
    """The two profiles side by side, slowest kernels first, with the totals."""
    keys = sorted(
        set(ours) | set(peer), key=lambda k: -max(ours.get(k, (0, 0))[1], peer.get(k, (0, 0))[1])
    )
    lines = [
        f"OpenVINO CPU kernels, {threads} thread(s), median of {calls} calls "
        "(microseconds per call, summed over the layers that run the kernel):",
        "",
        "| layer type | kernel | layers (ours) | layers (NNCF) | us (ours) | us (NNCF) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key in keys:
        a, b = ours.get(key, (0, 0.0)), peer.get(key, (0, 0.0))
        if a[1] == b[1] == 0 and a[0] == b[0]:  # the same layers, fused into their neighbours
            continue
        lines.append(f"| {key[0]} | {key[1]} | {a[0]} | {b[0]} | {a[1]:.1f} | {b[1]:.1f} |")
    total_ours = sum(v[1] for v in ours.values())
    total_peer = sum(v[1] for v in peer.values())
    same = {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in peer.items()}
    lines += [
        "",
        f"Summed kernel time: ours {total_ours / 1e3:.3f} ms, NNCF {total_peer / 1e3:.3f} ms "
        f"({total_ours / total_peer:.2f}x); "
        + (
            "the same kernels run the same number of layers in both."
            if same
            else "the compiled graphs differ (rows above)."
        ),
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model_dir = os.path.abspath(FLAGS.model_dir)
    folder = os.path.join(model_dir, "export", "openvino")
    for name in ("model_int8.xml", "model_float.xml"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise cli.InputError(
                f"--model_dir={model_dir}: no export/openvino/{name}; export the run first "
                "(python -m tfqat.export --model_dir=DIR)"
            )
    import openvino as ov
    from benchmark_backends import nncf_model

    from tfqat.recipe.run_dir import load_run

    run = load_run(model_dir)
    calibration = run.task.preprocessed_images(FLAGS.calibration_images)
    image = calibration[0][None]
    ours = ov.Core().read_model(os.path.join(folder, "model_int8.xml"))
    peer = nncf_model(os.path.join(folder, "model_float.xml"), calibration)
    profiles = kernel_profiles({"ours": ours, "nncf": peer}, image, FLAGS.threads, FLAGS.calls)
    print(comparison_markdown(profiles["ours"], profiles["nncf"], FLAGS.threads, FLAGS.calls))


if __name__ == "__main__":
    cli.run(main)
