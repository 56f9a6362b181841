"""The report's verdict: is the QAT int8 file worth shipping over the PTQ one?

No TensorFlow. From three rows of a report (`keras_float`, the fair float reference;
`tflite_int8`, the QAT file; `tflite_int8_ptq`, post-training quantization of the float model)
and their predictions files.

The noise figure is a paired bootstrap over the val images, computed for each run: the
question is which of this run's two files is better on images like the val set, and the
spread of QAT - PTQ over resampled val sets measures exactly what the val set's size leaves
uncertain (a gap within it could reverse on another val set of that size). Both files are
scored on the same resampled images, so what the images share cancels out. It does not
measure how much QAT itself varies from training run to training run; that answers another
question (does QAT help this recipe in general), which the README's measured rows address.
"""

import json
import os

import numpy as np

from tfqat.postprocess.metrics import IOU_TYPES, METRIC_NAMES, bootstrap_primary_metric

# Rows the verdict compares: artifact name -> its role.
ROWS = {"keras_float": "float", "tflite_int8": "qat", "tflite_int8_ptq": "ptq"}
# Bootstrap resamples of the val images: 100 give the standard deviation to about 7 %
# (1/sqrt(2 * 100)). The whole verdict of the main job's report (300 val images, 90,000
# detections per file) took 13 s here, on a 2-core EPYC shared with other jobs.
RESAMPLES = 100
# Half-width of the interval, in standard deviations of the bootstrap (95 %, normal).
Z_95 = 1.96

SHIP_QAT = "ship the QAT file"
PTQ_SUFFICES = "PTQ suffices here"
QAT_WORSE = "QAT is worse than PTQ here: ship the PTQ file"


def compute_verdict(report: dict, report_dir: str, resamples: int = RESAMPLES) -> dict | None:
    """The verdict of a report (see `decide`), or None when it lacks one of ROWS."""
    rows = {a["name"]: a for a in report["artifacts"] if a["name"] in ROWS}
    if len(rows) < len(ROWS):
        return None
    iou_type = IOU_TYPES[report["task"]]
    metric = METRIC_NAMES[iou_type][0]
    results = {}
    for name, row in rows.items():
        with open(os.path.join(report_dir, row["predictions"])) as f:
            results[ROWS[name]] = json.load(f)
    draws = bootstrap_primary_metric(report["val_annotations"], results, iou_type, resamples)
    values = {ROWS[name]: row["metrics"][metric] for name, row in rows.items()}
    noise = {
        "qat_minus_ptq": Z_95 * float(np.std(draws["qat"] - draws["ptq"])),
        "ptq_drop": Z_95 * float(np.std(draws["float"] - draws["ptq"])),
        "qat_drop": Z_95 * float(np.std(draws["float"] - draws["qat"])),
    }
    pruned = any(stage["name"] == "pqat" for stage in report["stages"])
    verdict = decide(metric, values, noise, pruned)
    verdict["noise_method"] = (
        f"95 % half-width, paired bootstrap over the val images ({resamples} resamples)"
    )
    return verdict


def decide(metric: str, values: dict, noise: dict, pruned: bool = False) -> dict:
    """The verdict from the primary metric of each file and the noise of two differences.

    Args:
      metric: the primary metric's name (mAP50_95, AP).
      values: {"float", "qat", "ptq"}: the metric of keras_float, tflite_int8, tflite_int8_ptq.
      noise: {"qat_minus_ptq", "ptq_drop", "qat_drop"}: 95 % half-widths of QAT - PTQ,
        float - PTQ and float - QAT.
      pruned: the QAT file comes from PQAT (pruned), the PTQ file from the dense float model.

    The recommendation compares the two int8 files: QAT ahead of PTQ by more than the noise:
    SHIP_QAT; behind by more than the noise: QAT_WORSE; within it: PTQ_SUFFICES (PTQ needs no
    QAT stage). `recovered`, the share of PTQ's drop that QAT won back, is None when PTQ did
    not drop below float by more than the noise (nothing to recover).
    """
    float_, qat, ptq = values["float"], values["qat"], values["ptq"]
    difference, drop = qat - ptq, float_ - ptq
    dropped = drop > noise["ptq_drop"]
    if difference > noise["qat_minus_ptq"]:
        recommendation = SHIP_QAT
    elif difference < -noise["qat_minus_ptq"]:
        recommendation = QAT_WORSE
    else:
        recommendation = PTQ_SUFFICES
    if pruned and recommendation != SHIP_QAT:
        recommendation += " (not pruned: PTQ quantizes the dense float model)"
    verdict = {
        "metric": metric,
        **values,
        "qat_ratio": _ratio(qat, float_),
        "ptq_ratio": _ratio(ptq, float_),
        "qat_minus_ptq": difference,
        "qat_minus_ptq_noise": noise["qat_minus_ptq"],
        "ptq_drop": drop,
        "ptq_drop_noise": noise["ptq_drop"],
        "qat_drop": float_ - qat,
        "qat_drop_noise": noise["qat_drop"],
        "recovered": difference / drop if dropped else None,
        "recommendation": recommendation,
    }
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in verdict.items()}


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def verdict_line(verdict: dict) -> str:
    """One line: both ratios, float - QAT against its noise, the share recovered, QAT - PTQ
    against its noise, the advice."""
    ratios = ", ".join(
        f"{label} int8 {_times(verdict[f'{role}_ratio'])} float"
        for role, label in (("qat", "QAT"), ("ptq", "PTQ"))
    )
    if verdict["recovered"] is None:
        recovered = (
            f"PTQ did not drop beyond noise (float - PTQ {verdict['ptq_drop']:+.4f} "
            f"± {verdict['ptq_drop_noise']:.4f})"
        )
    else:
        recovered = f"QAT recovered {verdict['recovered']:.0%} of PTQ's drop"
    qat_drop = f"float - QAT {verdict['qat_drop']:+.4f} ± {verdict['qat_drop_noise']:.4f}"
    return (
        f"Verdict ({verdict['metric']}): {ratios}; {qat_drop}; {recovered}; QAT - PTQ "
        f"{verdict['qat_minus_ptq']:+.4f} ± {verdict['qat_minus_ptq_noise']:.4f} (95 %, paired "
        f"bootstrap over val images): {verdict['recommendation']}."
    )


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}x"
