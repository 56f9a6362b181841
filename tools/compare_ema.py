"""Is the EMA the model you trained? The val metrics of a stage's last checkpoint twice: its EMA
weights (what the run evaluates and exports) and the weights the optimizer ended at.

    python tools/compare_ema.py --model_dir=runs/yolo_synthetic_long [--stage=float]

An EMA whose decay is too slow for the stage averages mid-training weights and trails the
trained ones; `python -m tfqat.train` refuses such flags (recipe.checks.check_ema), and this
measures what an existing run lost. One line per run; `--model_dir` takes several.
"""

from absl import app, flags

from tfqat import cli
from tfqat.postprocess.metrics import format_metrics
from tfqat.recipe.checks import has_checkpoint, run_flags

FLAGS = flags.FLAGS
flags.DEFINE_list("model_dir", None, "Run directories (tfqat.train --model_dir).")
flags.DEFINE_string("stage", "float", "The stage whose latest checkpoint is read.")
flags.mark_flags_as_required(["model_dir"])

# A stage checkpoint's entries: the EMA copy, and the model the optimizer trained.
WEIGHTS = {"ema": "EMA", "model": "trained"}


def stage_metrics(model_dir: str, fv, stage: str) -> dict:
    """{"EMA": metrics, "trained": metrics} of `stage`'s latest checkpoint on the run's val set
    (`fv`: the run's flags)."""
    from tfqat.recipe import build
    from tfqat.tasks.common import keras_predict_fn
    from tfqat.tf_compat import tf
    from tfqat.train.checkpoints import latest_checkpoint, restore_checked

    task = build.make_task(fv, *build.load_datasets(fv, build.dataset_paths(fv)))
    latest = latest_checkpoint(model_dir, stage)
    results = {}
    for entry, label in WEIGHTS.items():
        model = task.build_model()
        restore_checked(tf.train.Checkpoint(**{entry: model}), latest, f"the {stage} {entry}")
        results[label] = task.metrics(task.predict(keras_predict_fn(model)))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runs = {model_dir: run_flags("--model_dir", model_dir) for model_dir in FLAGS.model_dir}
    for model_dir in runs:
        if not has_checkpoint(model_dir, FLAGS.stage):
            stage = FLAGS.stage
            raise cli.InputError(f"--model_dir={model_dir}: no checkpoint of the {stage} stage")
    for model_dir, fv in runs.items():
        results = stage_metrics(model_dir, fv, FLAGS.stage)
        columns = [f"{label} {format_metrics(m)}" for label, m in results.items()]
        print(model_dir, FLAGS.stage, *columns, flush=True)


if __name__ == "__main__":
    cli.run(main)
