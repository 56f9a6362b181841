"""tools/benchmark.py's outputs: the ratios, benchmark.json, benchmark.md (tables), benchmark.png
(accuracy against end-to-end latency) and the same tables as a TensorBoard text summary in
DIR/benchmark/."""

import json
import os

from tfqat.fileio import atomic_write

FLOAT_REFERENCE, NNCF_REFERENCE = "tflite_float32", "openvino_int8_nncf"
INT8_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")
CALLGRIND_CAVEAT = (
    "Instructions per inference: valgrind callgrind, LiteRT at 1 thread. Valgrind runs x86 code "
    "only up to AVX2, so the count describes an AVX2 CPU without VNNI, whatever CPU ran it: on "
    "VNNI / dot-product hardware int8 needs fewer instructions than this count shows."
)


def row_ratios(row: dict, reference: dict | None, files: dict) -> dict | None:
    """`row` over `reference`: end-to-end and model-only median latency and CPU time, accuracy
    and raw size."""
    if reference is None:
        return None

    def ratio(a, b):
        return None if a is None or not b else round(a / b, 3)

    size = files.get(row["artifact"], {}).get("size_bytes", {}).get("raw")
    reference_size = files.get(reference["artifact"], {}).get("size_bytes", {}).get("raw")
    return {
        "end_to_end_ms": ratio(
            row["end_to_end"]["median_ms"], reference["end_to_end"]["median_ms"]
        ),
        "model_ms": ratio(row["model"]["median_ms"], reference["model"]["median_ms"]),
        "cpu_ms": ratio(row["end_to_end"]["cpu_ms"], reference["end_to_end"]["cpu_ms"]),
        "model_cpu_ms": ratio(row["model"]["cpu_ms"], reference["model"]["cpu_ms"]),
        "metric": ratio(row["metric"], reference["metric"]),
        "size": ratio(size, reference_size),
    }


def add_ratios(rows: list[dict], files: dict):
    """Each row's ratios to tflite_float32 on LiteRT at the same threads and to NNCF's INT8."""

    def find(artifact, threads=None):
        return next(
            (
                r
                for r in rows
                if r["artifact"] == artifact
                and threads in (None, r["threads"])
                and (artifact != FLOAT_REFERENCE or r["runtime"].startswith("LiteRT"))
            ),
            None,
        )

    for row in rows:
        row["ratios"] = {
            "to_tflite_float32": row_ratios(row, find(FLOAT_REFERENCE, row["threads"]), files),
            "to_nncf": row_ratios(row, find(NNCF_REFERENCE), files),
        }


def _number(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(ratios, key) -> str:
    return "" if not ratios or ratios.get(key) is None else f"{ratios[key]:.2f}x"


def headline(result: dict) -> list[str]:
    """The ratios a README quotes: tflite_int8 over tflite_float32 at each thread count,
    openvino_int8 over NNCF INT8, and the instruction counts' ratio."""
    lines = []
    for row in result["backends"]:
        if row["artifact"] == "tflite_int8" and row["runtime"].startswith("LiteRT"):
            r = row["ratios"]["to_tflite_float32"] or {}
            lines.append(
                f"- tflite_int8 / tflite_float32, LiteRT {row['threads']} thread(s): model "
                f"{_ratio(r, 'model_ms')}, end to end {_ratio(r, 'end_to_end_ms')}, CPU time "
                f"model {_ratio(r, 'model_cpu_ms')}, end to end {_ratio(r, 'cpu_ms')}, "
                f"{result['metric']} {_ratio(r, 'metric')}, size {_ratio(r, 'size')}"
            )
        if row["artifact"] == "openvino_int8":
            r = row["ratios"]["to_nncf"] or {}
            lines.append(
                f"- openvino_int8 / NNCF INT8 (OpenVINO): model {_ratio(r, 'model_ms')}, end to "
                f"end {_ratio(r, 'end_to_end_ms')}, CPU time {_ratio(r, 'cpu_ms')}, "
                f"{result['metric']} {_ratio(r, 'metric')}"
            )
    dot_products = [f for f in result["machine"]["isa"] if f in INT8_DOT_PRODUCTS]
    lines.append(
        f"- int8 dot-product instructions of this CPU: {', '.join(dot_products)}"
        if dot_products
        else "- this CPU has no int8 dot-product instructions (no VNNI, no AMX): int8 gains "
        "little over float32 here; see the instruction counts"
    )
    counts = {n: f.get("instructions_per_inference") for n, f in result["files"].items()}
    if counts.get("tflite_int8") and counts.get("tflite_float32"):
        lines.append(
            "- instructions per inference, tflite_int8 / tflite_float32 (callgrind, an AVX2 "
            f"CPU without VNNI): {counts['tflite_int8'] / counts['tflite_float32']:.2f}x"
        )
    return ["## Headline ratios", "", *lines, ""]


def markdown(result: dict) -> str:
    """The tables of benchmark.md, with the machine and the method above them."""
    machine, method, metric = result["machine"], result["method"], result["metric"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines = [
        f"# Benchmark of `{result['model_dir']}`",
        "",
        f"CPU: {machine['model']}, {machine['usable_cores']} cores usable of {machine['cores']}, "
        f"ISA: {', '.join(machine['isa']) or 'no AVX2'}. {versions}.",
        "",
        f"Method: {method['description']} OpenVINO's default precision for the float IR here: "
        f"{result['default_float_precision']}.",
        "",
        *headline(result),
        "## Files",
        "",
        f"| artifact | file | raw bytes | gzip -9 | xz -9 | zstd -19 | kernel zeros | {metric} "
        "| instructions / inference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in result["files"].items():
        size = f["size_bytes"]
        instructions = f.get("instructions_per_inference")
        lines.append(
            f"| {name} | {f['path']} | {size['raw']:,} | {size['gzip']:,} | {size['xz']:,} | "
            f"{size['zstd']:,} | {f['sparsity']:.3f} | {_number(f['metric'], 4)} | "
            f"{'' if instructions is None else f'{instructions / 1e6:.1f} M'} |"
        )
    lines += [
        "",
        "## Latency and CPU time per image",
        "",
        "Milliseconds; model: the file alone on a letterboxed (pose: cropped), quantized image; "
        "end to end: a decoded image through letterbox or person crop, quantization, the "
        f"model, the numpy decode (detectors: and NMS at score {method['score_threshold']}). "
        "CPU: process CPU-milliseconds per image, every thread (an energy proxy), of the model "
        "call and of the end-to-end call. Ratios: model latency, end-to-end latency and CPU "
        "times over tflite_float32 on LiteRT at the same threads; end-to-end latency over NNCF "
        "INT8.",
        "",
        f"| artifact | runtime | threads | model median | model p90 | end-to-end median | "
        f"end-to-end p90 | model CPU ms | CPU ms | {metric} | model vs float32 | vs float32 | "
        "model CPU vs float32 | CPU vs float32 | vs NNCF | images/s (THROUGHPUT) |",
        "| --- | --- |" + " ---: |" * 14,
    ]
    for row in result["backends"]:
        model, e2e, ratios = row["model"], row["end_to_end"], row["ratios"]
        lines.append(
            f"| {row['artifact']} | {row['runtime']} | {row['threads']} | "
            f"{model['median_ms']:.2f} | {model['p90_ms']:.2f} | {e2e['median_ms']:.2f} | "
            f"{e2e['p90_ms']:.2f} | {model['cpu_ms']:.2f} | {e2e['cpu_ms']:.2f} | "
            f"{_number(row['metric'], 4)} | "
            f"{_ratio(ratios['to_tflite_float32'], 'model_ms')} | "
            f"{_ratio(ratios['to_tflite_float32'], 'end_to_end_ms')} | "
            f"{_ratio(ratios['to_tflite_float32'], 'model_cpu_ms')} | "
            f"{_ratio(ratios['to_tflite_float32'], 'cpu_ms')} | "
            f"{_ratio(ratios['to_nncf'], 'end_to_end_ms')} | "
            f"{_number(row.get('throughput_images_per_s'), 1)} |"
        )
    if any(f.get("instructions_per_inference") for f in result["files"].values()):
        lines += ["", CALLGRIND_CAVEAT]
    if result.get("training"):
        lines += ["", *training_table(result["training"])]
    return "\n".join(lines) + "\n"


def training_table(training: dict) -> list[str]:
    lines = [
        "## Training",
        "",
        f"{training['description']}",
        "",
        "| what | images/s | time per image vs float step |",
        "| --- | ---: | ---: |",
    ]
    float_rate = training["images_per_second"].get("float step")
    for name, rate in training["images_per_second"].items():
        ratio = f"{float_rate / rate:.2f}x" if name.endswith("step") and float_rate else ""
        lines.append(f"| {name} | {rate:.1f} | {ratio} |")
    return lines


def plot(result: dict, path: str):
    """Accuracy against end-to-end median latency, one labelled point per file and runtime."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(11, 6))
    markers = "osD^v<>pPX*h"
    points = [r for r in result["backends"] if r["metric"] is not None]
    for number, row in enumerate(points, 1):
        x, y = row["end_to_end"]["median_ms"], row["metric"]
        label = f"{number}: {row['artifact']}, {row['runtime']}, {row['threads']}t"
        axes.scatter([x], [y], s=30, marker=markers[(number - 1) % len(markers)], label=label)
        axes.annotate(str(number), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_xlabel("end-to-end latency per image, median (ms)")
    axes.set_ylabel(result["metric"])
    machine = result["machine"]
    axes.set_title(f"{os.path.basename(result['model_dir'])}: {machine['model']}", fontsize=9)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    pyplot.close(figure)
    atomic_write(path, buffer.getvalue())


def write_tensorboard_text(folder: str, text: str):
    """DIR/benchmark/: one TensorBoard event file with `text` as the "benchmark" text summary;
    a rerun replaces the folder whole (tfqat.export.artifacts.staged_folder)."""
    from tfqat.export.artifacts import staged_folder
    from tfqat.tf_compat import tf

    with staged_folder(folder) as staging:
        writer = tf.summary.create_file_writer(staging)
        with writer.as_default():
            tf.summary.text("benchmark", text, step=0)
        writer.close()


def write_outputs(model_dir: str, result: dict) -> str:
    """benchmark.json, benchmark.md, benchmark.png and benchmark/ (TensorBoard) in the run."""
    text = markdown(result)
    atomic_write(os.path.join(model_dir, "benchmark.json"), json.dumps(result, indent=1))
    atomic_write(os.path.join(model_dir, "benchmark.md"), text)
    plot(result, os.path.join(model_dir, "benchmark.png"))
    write_tensorboard_text(os.path.join(model_dir, "benchmark"), text)
    return text
