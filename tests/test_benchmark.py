"""tools/benchmark.py and tfqat.evaluate.timing: sizes, interleaved wall and CPU time, the
writers, and the tool on the smoke run (callgrind and --training in a slow test)."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import REPO, tensorboard_runs

from tfqat.evaluate import timing
from tfqat.evaluate.report import compressed_sizes

TOOLS = os.path.join(REPO, "tools")


def _tool(name):
    """A module of tools/ (they import their siblings by name, as when run as scripts)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    return importlib.import_module(name)


def test_compressed_sizes_of_repetitive_and_random_bytes():
    repetitive = b"tfqat int8 " * 10_000
    sizes = compressed_sizes(repetitive)
    assert sizes["raw"] == len(repetitive)
    assert all(sizes[k] < len(repetitive) // 50 for k in ("gzip", "xz", "zstd"))
    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    sizes = compressed_sizes(noise)
    assert all(len(noise) * 0.99 < sizes[k] < len(noise) * 1.01 for k in ("gzip", "xz", "zstd"))


def test_interleaved_times_calls_each_once_a_round_in_changing_orders():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abcd"}
    times = timing.interleaved_times(calls, rounds=20, warmup=2)
    assert order[:8] == list("aabbccdd")  # warm-up, in turn
    rounds = [order[8 + 4 * r : 12 + 4 * r] for r in range(20)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 5
    assert set(times) == set("abcd")
    assert all(len(t["wall"]) == len(t["cpu"]) == 20 for t in times.values())
    again = []
    calls = {name: (lambda n=name: again.append(n)) for name in "abcd"}
    timing.interleaved_times(calls, rounds=20, warmup=2)
    assert again == order  # seeded


def _work(iterations=200_000):
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def test_cpu_time_counts_the_callers_work_and_its_threads_after_it_returns():
    """A call's CPU time is the process's, every thread, until the next call starts: a call that
    leaves a thread working after it returns is charged for it, a sleeping call is not."""

    def leaves_a_thread_working():
        thread = threading.Thread(target=_work)
        thread.start()
        return thread

    calls = {
        "sleeps": lambda: time.sleep(0.002),
        "works": _work,
        "leaves_a_thread_working": leaves_a_thread_working,
    }
    times = timing.interleaved_times(calls, rounds=3, warmup=1, settle_seconds=0.3)
    cpu = {name: float(np.median(t["cpu"])) for name, t in times.items()}
    assert cpu["sleeps"] < 0.2 * cpu["works"]
    assert cpu["leaves_a_thread_working"] > 0.5 * cpu["works"]
    summary = timing.time_summary(times["works"])
    assert summary["p90_ms"] >= summary["median_ms"] > 0 and summary["cpu_ms"] > 0


def test_cpu_info_reads_the_model_and_the_int8_extensions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 avx512f "
        "avx512_vnni amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: Some CPU 9000\n"
    )
    info = timing.cpu_info(str(cpuinfo))
    isa = ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    assert info == {"model": "Some CPU 9000", "isa": isa}
    assert timing.cpu_info(str(tmp_path / "missing"))["isa"] == []


def test_dumped_instructions_reads_each_profile_in_call_order(tmp_path):
    callgrind = _tool("benchmark_callgrind")
    out = tmp_path / "callgrind.out"
    out.write_text("summary: 0\n")  # the final dump, outside any invoke
    for n, count in [(1, 120), (2, 100), (10, 101)]:
        (tmp_path / f"callgrind.out.{n}").write_text(f"events: Ir\nsummary: {count}\n")
    assert callgrind.dumped_instructions(str(out)) == [120, 100, 101]


def _row(artifact, runtime, threads, e2e, model, cpu, metric):
    return {
        "artifact": artifact,
        "runtime": runtime,
        "threads": threads,
        "model": {"median_ms": model, "p90_ms": model * 1.5, "cpu_ms": model},
        "end_to_end": {"median_ms": e2e, "p90_ms": e2e * 1.5, "cpu_ms": cpu},
        "metric": metric,
    }


def _file(path, raw, metric, instructions=None):
    sizes = {"raw": raw, "gzip": raw - 3, "xz": raw - 5, "zstd": raw - 4}
    return {
        "path": path,
        "size_bytes": sizes,
        "sparsity": 0.25,
        "metric": metric,
        "instructions_per_inference": instructions,
    }


def _result(model_dir):
    report = _tool("benchmark_report")
    rows = [
        _row("tflite_float32", "LiteRT XNNPACK", 1, 8.0, 6.0, 8.0, 0.5),
        _row("tflite_float32", "LiteRT XNNPACK", 2, 5.0, 4.0, 9.0, 0.5),
        _row("tflite_int8", "LiteRT XNNPACK", 1, 4.0, 2.0, 4.0, 0.49),
        _row("tflite_int8", "LiteRT XNNPACK", 2, 4.0, 2.0, 6.0, 0.49),
        _row("openvino_int8_nncf", "OpenVINO LATENCY", 2, 2.0, 1.0, 3.0, 0.48),
    ]
    rows[-1]["throughput_images_per_s"] = 900.0
    files = {
        "tflite_float32": _file("export/model_float32.tflite", 4000, 0.5, 69_100_000),
        "tflite_int8": _file("export/model_int8.tflite", 1000, 0.49, 64_400_000),
        "openvino_int8_nncf": _file("(nncf)", 1200, 0.48),
    }
    report.add_ratios(rows, files)
    return {
        "model_dir": str(model_dir),
        "task": "detection",
        "metric": "mAP50_95",
        "machine": {"model": "Some CPU", "isa": ["avx2"], "cores": 2, "usable_cores": 2},
        "versions": {"tfqat": "0"},
        "method": {"description": "test.", "score_threshold": 0.25},
        "default_float_precision": "f32",
        "files": files,
        "backends": rows,
        "training": {
            "description": "test.",
            "images_per_second": {"pipeline": 500.0, "float step": 100.0, "qat step": 50.0},
        },
    }


def test_ratios_are_to_float32_at_the_same_threads_and_to_nncf(tmp_path):
    rows = _result(tmp_path)["backends"]
    int8_1t, int8_2t = rows[2]["ratios"], rows[3]["ratios"]
    assert int8_1t["to_tflite_float32"] == {
        "end_to_end_ms": 0.5,
        "model_ms": 0.333,
        "cpu_ms": 0.5,
        "model_cpu_ms": 0.333,
        "metric": 0.98,
        "size": 0.25,
    }
    assert int8_2t["to_tflite_float32"]["end_to_end_ms"] == 0.8
    assert int8_2t["to_tflite_float32"]["cpu_ms"] == 0.667
    assert int8_2t["to_nncf"]["end_to_end_ms"] == 2.0
    assert int8_2t["to_nncf"]["size"] == 0.833


def test_writers_make_json_markdown_png_and_a_tensorboard_text(tmp_path):
    report = _tool("benchmark_report")
    result = _result(tmp_path)
    text = report.write_outputs(str(tmp_path), result)
    assert json.loads((tmp_path / "benchmark.json").read_text()) == result
    assert (tmp_path / "benchmark.md").read_text() == text
    row = "| tflite_int8 | LiteRT XNNPACK | 2 | 2.00 | 3.00 | 4.00 | 6.00 | 2.00 | 6.00 | 0.4900 |"
    assert row in text
    assert "| 0.50x | 0.80x | 0.50x | 0.67x | 2.00x |" in text
    headline = "LiteRT 1 thread(s): model 0.33x, end to end 0.50x, CPU time model 0.33x, end to end"
    assert headline + " 0.50x" in text
    assert "tflite_int8 / tflite_float32 (callgrind, an AVX2 CPU without VNNI): 0.93x" in text
    assert "this CPU has no int8 dot-product instructions (no VNNI, no AMX)" in text
    assert "| tflite_int8 | export/model_int8.tflite | 1,000 | 997 | 995 | 996 | 0.250 |" in text
    assert "64.4 M" in text and "without VNNI" in text
    assert "| qat step | 50.0 | 2.00x |" in text
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.write_outputs(str(tmp_path), result)  # a rerun replaces the TensorBoard folder
    assert tensorboard_runs(tmp_path) == {"benchmark": {"benchmark": [0]}}
    assert len(os.listdir(tmp_path / "benchmark")) == 1


def _benchmark(model_dir, cache, *flags):
    env = dict(os.environ, TFQAT_CACHE_DIR=str(cache), PYTHONPATH=REPO)
    command = [sys.executable, os.path.join(TOOLS, "benchmark.py"), f"--model_dir={model_dir}"]
    result = subprocess.run([*command, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((model_dir / "benchmark.json").read_text())


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_benchmark_of_the_smoke_run_covers_every_file_and_runtime(smoke_yolo_run, tmp_path):
    run = _copy_run(smoke_yolo_run, tmp_path)
    flags = ("--rounds=3", "--warmup=1", "--throughput_seconds=0.05", "--nocallgrind")
    result = _benchmark(run, smoke_yolo_run.parent / "cache", *flags, "--threads=2")
    report = json.loads((run / "report.json").read_text())
    exported = {a["name"] for a in report["artifacts"] if a["format"] != "keras"}
    assert set(result["files"]) == exported | {"openvino_int8_nncf"}
    rows = {(r["artifact"], r["runtime"], r["threads"]): r for r in result["backends"]}
    tflite = {name for name in exported if name.startswith("tflite")}
    assert {(a, t) for a, r, t in rows if r == "LiteRT XNNPACK"} == {
        (name, threads) for name in tflite for threads in (1, 2)
    }
    assert ("onnx_int8", "onnxruntime", 2) in rows
    assert ("openvino_float", "OpenVINO LATENCY f32", 2) in rows
    for row in rows.values():
        assert row["end_to_end"]["median_ms"] > 0 and row["end_to_end"]["cpu_ms"] > 0
        assert row["ratios"]["to_tflite_float32"] and row["ratios"]["to_nncf"]
    assert rows[("openvino_int8", "OpenVINO LATENCY", 2)]["throughput_images_per_s"] > 0
    assert rows[("openvino_int8", "OpenVINO LATENCY", 2)]["convolution_precisions"]
    by_name = {a["name"]: a for a in report["artifacts"]}
    int8 = by_name["tflite_int8"]
    assert rows[("tflite_int8", "LiteRT XNNPACK", 1)]["metric"] == int8["metrics"]["mAP50_95"]
    assert result["files"]["tflite_int8"]["size_bytes"]["raw"] == int8["size_bytes"]
    assert result["files"]["tflite_int8"]["size_bytes"]["gzip"] == int8["gzip_bytes"]
    for name in ("benchmark.md", "benchmark.png"):
        assert (run / name).stat().st_size > 0
    assert "benchmark" in tensorboard_runs(run)
    assert "valgrind" not in result["versions"]


@pytest.mark.slow
def test_benchmark_counts_instructions_and_times_training(smoke_yolo_run, tmp_path):
    run = _copy_run(smoke_yolo_run, tmp_path)
    flags = ("--rounds=2", "--warmup=1", "--throughput_seconds=0.05", "--training")
    result = _benchmark(run, tmp_path / "cache_valgrind", *flags)
    counts = {n: f["instructions_per_inference"] for n, f in result["files"].items()}
    assert all(counts[n] > 1e5 for n in counts if n.startswith("tflite"))
    assert all(counts[n] is None for n in counts if not n.startswith("tflite"))
    assert result["versions"]["valgrind"].startswith("valgrind-")
    rates = result["training"]["images_per_second"]
    assert set(rates) == {"pipeline", "float step", "qat step", "pqat step"}
    assert all(rate > 0 for rate in rates.values())


def test_openvino_kernel_profile_of_the_smoke_run_against_nncf(smoke_yolo_run):
    env = dict(os.environ, TFQAT_CACHE_DIR=str(smoke_yolo_run.parent / "cache"), PYTHONPATH=REPO)
    command = [sys.executable, os.path.join(TOOLS, "profile_openvino.py")]
    flags = [f"--model_dir={smoke_yolo_run}", "--calls=3"]
    result = subprocess.run([*command, *flags], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if "| Convolution |" in line]
    assert rows and all(row[2] == row[3] for row in rows), result.stdout  # as many conv layers
    assert "Summed kernel time: ours" in result.stdout


def test_openvino_kernel_profile_names_a_run_without_intel_files(tmp_path):
    (tmp_path / "export").mkdir()
    command = [sys.executable, os.path.join(TOOLS, "profile_openvino.py")]
    result = subprocess.run(
        [*command, f"--model_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no export/openvino/model_int8.xml" in lines[0], result.stderr
