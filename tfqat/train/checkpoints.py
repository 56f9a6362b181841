"""Where a run keeps its weights (`<model_dir>/checkpoints/<stage>/`), and restoring them.

Each stage's checkpoint holds the EMA model as `ema` (what is evaluated and exported) beside
the training state `fit` resumes from.
"""

import os

from tfqat.tf_compat import tf

# The float stages whose EMA weights are "the float model", latest first.
FLOAT_STAGES = ("float_reference", "float")
# The quantization stages and the TF-MOT scheme each trains (and restores) its model with:
# "pqat" keeps the pruned zeros.
QAT_SCHEMES = {"qat": "default", "pqat": "prune_preserve"}


def stage_dir(model_dir: str, stage: str) -> str:
    return os.path.join(model_dir, "checkpoints", stage)


def latest_checkpoint(model_dir: str, stage: str) -> str | None:
    return tf.train.latest_checkpoint(stage_dir(model_dir, stage))


def latest_float_stage(model_dir: str) -> str:
    """The last float stage with a checkpoint (float_reference, else float)."""
    for stage in FLOAT_STAGES:
        if latest_checkpoint(model_dir, stage):
            return stage
    raise FileNotFoundError(f"{model_dir}: no checkpoint of any stage yet")


def restore_stage_model(task, model_dir: str, stage: str):
    """A float model of `task` with the EMA weights of `stage`'s latest checkpoint."""
    model = task.build_model()
    tf.train.Checkpoint(ema=model).restore(latest_checkpoint(model_dir, stage)).expect_partial()
    return model


def restore_export_models(task, model_dir: str, stages) -> dict:
    """{"keras_float", "keras_qat"} of a finished QAT or PQAT run, from its checkpoints."""
    from tfqat.optimize import qat

    stage = next((s for s in QAT_SCHEMES if s in stages), None)
    if stage is None:
        raise ValueError(
            f"{model_dir}: --stages={','.join(stages)} has no QAT stage, so there is no int8 "
            "model to export"
        )
    latest = latest_checkpoint(model_dir, stage)
    if latest is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint of the {stage} stage yet")
    with qat.qat_scope():
        qat_model = qat.quantize(task.build_model(), QAT_SCHEMES[stage])
    tf.train.Checkpoint(ema=qat_model).restore(latest).expect_partial()
    float_model = restore_stage_model(task, model_dir, latest_float_stage(model_dir))
    return {"keras_float": float_model, "keras_qat": qat_model}


def load_float_weights(model, checkpoint: str):
    """Loads weights a user brings: a tfqat run dir (its float EMA), a TF checkpoint or .h5."""
    if os.path.isdir(checkpoint):
        latest = latest_checkpoint(checkpoint, "float")
        if latest is None:
            raise FileNotFoundError(f"--init_checkpoint={checkpoint}: no float checkpoint in it")
        tf.train.Checkpoint(ema=model).restore(latest).expect_partial()
    elif checkpoint.endswith(".h5"):
        model.load_weights(checkpoint)
    else:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
