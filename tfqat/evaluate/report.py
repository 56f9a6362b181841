"""report.json / report.md of a run: one row per artifact (README.md, "report.json").

No TensorFlow."""

import gzip
import json
import lzma
import os

import numpy as np

from tfqat.evaluate.verdict import compute_verdict, verdict_line
from tfqat.fileio import atomic_write


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def compressed_sizes(data: bytes) -> dict:
    """Bytes of a file raw and as app stores and OTA updates ship it: gzip -9, xz -9, zstd -19."""
    import zstandard

    return {
        "raw": len(data),
        "gzip": gzip_size(data),
        "xz": len(lzma.compress(data, preset=9)),
        "zstd": len(zstandard.ZstdCompressor(level=19).compress(data)),
    }


def zero_fraction(arrays) -> float:
    """Fraction of exact zeros over the given arrays (conv/dense kernels)."""
    total = sum(a.size for a in arrays)
    zeros = sum(int((np.asarray(a) == 0).sum()) for a in arrays)
    return zeros / total if total else 0.0


def artifact_row(
    name, path, fmt, precision, data: bytes, sparsity, metrics, predictions, model_dir
):
    return {
        "name": name,
        "path": os.path.relpath(path, model_dir),
        "format": fmt,
        "precision": precision,
        "size_bytes": len(data),
        "gzip_bytes": gzip_size(data),
        "sparsity": round(float(sparsity), 6),
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "predictions": os.path.relpath(predictions, model_dir),
    }


def new_report(task, paths: dict, stages: list) -> dict:
    """A report with no artifact yet: the task, its input size, the dataset paths, the stages."""
    return {
        "task": task.name,
        "input_size": list(task.config.input_size),
        **paths,
        "stages": stages,
        "artifacts": [],
    }


def load_report(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_report(path: str, report: dict):
    """Writes report.json at `path` and its Markdown twin beside it (.md), with the verdict
    (QAT vs PTQ, `tfqat.evaluate.verdict`) when the report has the rows it compares."""
    report.pop("verdict", None)
    verdict = compute_verdict(report, os.path.dirname(os.path.abspath(path)))
    if verdict:
        report["verdict"] = verdict
    atomic_write(path, json.dumps(report, indent=1))
    atomic_write(os.path.splitext(path)[0] + ".md", report_markdown(report))


def upsert_artifact(report: dict, row: dict):
    """Replaces the artifact of the same name, or appends it."""
    report["artifacts"] = [a for a in report.get("artifacts", []) if a["name"] != row["name"]]
    report["artifacts"].append(row)


def report_markdown(report: dict) -> str:
    lines = [f"# tfqat report: {report['task']}", ""]
    lines.append(f"Input size (h, w): {report['input_size']}  ")
    lines.append(f"Val set: `{report['val_annotations']}`")
    lines += ["", "| stage | steps | seconds |", "| --- | ---: | ---: |"]
    lines += [f"| {s['name']} | {s['steps']} | {s['seconds']:.1f} |" for s in report["stages"]]
    metric_names = sorted({m for a in report["artifacts"] for m in a["metrics"]})
    lines += [
        "",
        "| artifact | format | precision | size (bytes) | gzip (bytes) | sparsity | "
        + " | ".join(metric_names)
        + " |",
    ]
    lines.append("| --- " * (6 + len(metric_names)) + "|")
    for a in report["artifacts"]:
        metrics = " | ".join(f"{a['metrics'].get(m, float('nan')):.4f}" for m in metric_names)
        lines.append(
            f"| {a['name']} | {a['format']} | {a['precision']} | {a['size_bytes']} | "
            f"{a['gzip_bytes']} | {a['sparsity']:.3f} | {metrics} |"
        )
    if "verdict" in report:
        lines += ["", verdict_line(report["verdict"])]
    return "\n".join(lines) + "\n"
