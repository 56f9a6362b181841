"""A whole recipe: train its stages, evaluate what they made, export and check it, report.

`python -m tfqat.train` calls `run_recipe`; it writes report.json after the Keras rows (kept if
an export fails) and again after the exported files.
"""

import os
import subprocess
import sys

import tfqat
from tfqat.cli import RunStopped
from tfqat.evaluate import report as report_lib
from tfqat.evaluate.artifacts import evaluate_keras, export_and_evaluate, fail_on
from tfqat.train.stages import run_stages


def run_recipe(
    task,
    model_dir,
    paths,
    stages,
    init_checkpoint=None,
    calibration_images=64,
    min_output_levels=32,
    pruning=None,
    qat_options=None,
    distribution=None,
):
    """Trains every stage, then evaluates (and, after QAT, exports) what they produced.

    Under a strategy (`distribution`, a train.distribute.Distribution) every worker trains; only
    the chief evaluates, exports and reports (the others return None).
    """
    trained = run_stages(
        task,
        model_dir,
        stages,
        init_checkpoint,
        calibration_images,
        pruning,
        qat_options,
        distribution,
    )
    if distribution is not None and not distribution.is_chief:
        return None
    report = report_lib.new_report(task, paths, trained.records)
    for name, result in trained.results.items():
        # A stage that validated its final model hands over those predictions.
        row = evaluate_keras(task, result.model, name, model_dir, result.val_results)
        report_lib.upsert_artifact(report, row)
    report_path = os.path.join(model_dir, "report.json")
    report_lib.write_report(report_path, report)
    problems = []
    if "keras_qat" in trained.results and distribution is not None and distribution.distributed:
        export_in_child_process(model_dir)
        return report_lib.load_report(model_dir)
    if "keras_qat" in trained.results:
        models = {name: result.model for name, result in trained.results.items()}
        rows, report["parity"], problems = export_and_evaluate(
            task, models, model_dir, trained.calibration, min_output_levels
        )
        for row in rows:
            report_lib.upsert_artifact(report, row)
        report_lib.write_report(report_path, report)
    print(report_lib.report_markdown(report))
    fail_on(problems)
    return report


def export_in_child_process(model_dir):
    """`python -m tfqat.export --model_dir=model_dir` in a process of its own, for a run trained
    under a strategy: in such a process LiteRT's interpreter corrupted the heap (3 of 9
    two-worker smoke runs and 1 MirroredStrategy smoke run aborted in allocate_tensors with
    "double free or corruption")."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tfqat.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tfqat.export", f"--model_dir={model_dir}"]
    sys.stdout.flush()
    status = subprocess.run(command, env=env).returncode
    if status:
        raise RunStopped(
            f"{' '.join(command)} (the chief's export) exited with status {status}; training "
            "is complete and checkpointed, so that command alone repeats the export"
        )
