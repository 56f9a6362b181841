"""A whole recipe: train its stages, evaluate what they made, export and check it, report.

`python -m tfqat.train` calls `run_recipe`; it writes report.json after the Keras rows (kept if
an export fails) and again after the exported files.
"""

import os

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
