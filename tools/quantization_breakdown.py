"""Where does the int8 model lose? A run's QAT model scored on its val set with one group of its
fake-quantizers switched off at a time (that group then computes in float).

    python tools/quantization_breakdown.py --model_dir=runs/yolo_synthetic_long

One line per variant: "all on" is the QAT model as trained (what the int8 files compute, up to
the converter's rounding), "nothing" is the QAT weights in float. The groups follow the layers
TF-MOT wraps: batch-norm outputs (the conv outputs before each activation, which the .tflite
keeps in int8 as its LOGISTIC/MUL or ReLU inputs), activation outputs, the adds and concats,
the last convolutions' outputs (the heads), and the weights. `--model_dir` takes several runs.
"""

from absl import app, flags

from tfqat import cli
from tfqat.postprocess.metrics import format_metrics
from tfqat.recipe.checks import has_checkpoint, run_flags

FLAGS = flags.FLAGS
flags.DEFINE_list("model_dir", None, "Run directories of finished QAT runs (tfqat.train).")
flags.mark_flags_as_required(["model_dir"])

# Variant -> groups switched off (`tfqat.optimize.qat.QUANTIZER_GROUPS`).
VARIANTS = {
    "all on": (),
    "batch-norm outputs off": ("batch_norm",),
    "activation outputs off": ("activation",),
    "add and concat outputs off": ("merge",),
    "head outputs off": ("head",),
    "weights off": ("weights",),
    "every activation off": ("batch_norm", "activation", "merge", "head"),
    "nothing quantized": ("batch_norm", "activation", "merge", "head", "weights"),
}


def breakdown(model_dir: str, fv):
    """Yields (variant, quantizers switched off, metrics) for the run's QAT model."""
    from tfqat.optimize import qat
    from tfqat.recipe import build
    from tfqat.tasks.common import keras_predict_fn
    from tfqat.train.checkpoints import restore_qat_model

    task = build.make_task(fv, *build.load_datasets(fv, build.dataset_paths(fv)))
    for variant, groups in VARIANTS.items():
        model = restore_qat_model(task, model_dir, fv.stages)
        count = qat.switch_off_quantizers(model, groups)
        yield variant, count, task.metrics(task.predict(keras_predict_fn(model)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runs = {model_dir: run_flags("--model_dir", model_dir) for model_dir in FLAGS.model_dir}
    for model_dir, fv in runs.items():
        stage = next((s for s in ("pqat", "qat") if s in fv.stages), None)
        if stage is None or not has_checkpoint(model_dir, stage):
            raise cli.InputError(f"--model_dir={model_dir}: no checkpoint of a QAT or PQAT stage")
    for model_dir, fv in runs.items():
        for variant, count, metrics in breakdown(model_dir, fv):
            print(model_dir, f"{variant} ({count} off):", format_metrics(metrics), flush=True)


if __name__ == "__main__":
    cli.run(main)
