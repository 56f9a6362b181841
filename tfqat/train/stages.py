"""The stage sequence of a recipe: float -> [prune] -> qat | pqat -> float_reference[_prune].

`run_stages` trains every stage of `stages` (train.loop.StageConfig) and returns what they made;
evaluating and exporting it is `tfqat.recipe.run`'s job.
"""

import dataclasses

import numpy as np

from tfqat.tf_compat import keras, tf
from tfqat.train.checkpoints import QAT_SCHEMES, load_float_weights
from tfqat.train.distribute import Distribution, copy_weights
from tfqat.train.loop import Distillation, StageResult, fit


@dataclasses.dataclass
class TrainedStages:
    results: dict  # artifact name ("keras_float", "keras_qat") -> StageResult
    records: list  # {"name", "steps", "seconds"} per stage, in the order they ran
    calibration: np.ndarray | None  # the images that calibrated QAT (and calibrate the export)


def run_stages(
    task,
    model_dir,
    stages,
    init_checkpoint=None,
    calibration_images=64,
    pruning=None,
    qat_options=None,
    distribution: Distribution | None = None,
) -> TrainedStages:
    """Trains every stage; each resumes from its own checkpoints under model_dir.

    `pruning` (prune.PruningOptions) configures the prune stage when `stages` has one,
    `qat_options` (qat_schedule.QatOptions; default: its defaults) the QAT or PQAT stage. Under
    `distribution` every stage's model is built in its scope; the models returned are outside
    it (`Distribution.local_copy`), ready to evaluate and export.
    """
    distribution = distribution or Distribution()
    keras.utils.set_random_seed(stages[0].seed)
    by_name = {stage.name: stage for stage in stages}
    with distribution.scope():
        model = task.build_model()
        if init_checkpoint:
            skipped = load_float_weights(model, init_checkpoint)
    if init_checkpoint:
        print(f"[float] initialized from --init_checkpoint={init_checkpoint}")
        if skipped:
            print(
                f"[float] --init_checkpoint has another head: {len(skipped)} output variables "
                f"keep their initial values: {', '.join(skipped)}"
            )
    records = []

    def train(
        stage_name, stage_model, epoch_summaries=None, step_hook=None, distillation=None
    ) -> StageResult:
        result = fit(
            task,
            stage_model,
            task.train_dataset,
            by_name[stage_name],
            model_dir,
            distribution=distribution,
            epoch_summaries=epoch_summaries,
            step_hook=step_hook,
            distillation=distillation,
        )
        records.append(
            {"name": stage_name, "steps": result.steps, "seconds": round(result.seconds, 1)}
        )
        return result

    def clone(base):
        """A copy of `base` (a finished stage's model) under the strategy, to train on."""
        with distribution.scope():
            return clone_with_weights(base)

    float_stage = train("float", model)
    trained = {"keras_float": float_stage}
    quantize_stage = "pqat" if "pqat" in by_name else "qat" if "qat" in by_name else None
    if quantize_stage is None:
        return TrainedStages(trained, records, None)
    from tfqat.optimize import qat, ranges
    from tfqat.optimize.qat_schedule import QatOptions

    options = qat_options or QatOptions()
    calibration = task.preprocessed_images(calibration_images)
    base = float_stage.model
    if "prune" in by_name:
        base = train_pruned(train, base, pruning, by_name["prune"].total_steps, distribution)
    with qat.qat_scope():
        with distribution.scope():
            qat_model = qat.quantize(
                clone_with_weights(base), QAT_SCHEMES[quantize_stage], options.activation_quantizer
            )
            # Every worker calibrates on the same images (`base` is outside the strategy), so
            # the ranges start equal everywhere.
            ranges.calibrate(qat_model, base, calibration)
        hook = options.step_hook(quantize_stage, by_name[quantize_stage].total_steps)
        distillation = None
        if options.distillation:
            teacher = clone(base)  # the float (or pruned) model the stage started from
            teacher.trainable = False
            distillation = Distillation(teacher, options.distillation)
        trained["keras_qat"] = train(
            quantize_stage, qat_model, quantizer_range_summaries, hook, distillation
        )
    reference = float_stage
    for name in ("float_reference_prune", "float_reference"):
        if name in by_name:
            reference = train(name, clone(reference.model))
    trained["keras_float"] = reference
    return TrainedStages(trained, records, calibration)


def train_pruned(train, float_model, options, stage_steps, distribution):
    """The prune stage: a copy of `float_model` pruned under the strategy to the target and
    trained, returned stripped and outside the strategy.

    Fails (PruningTargetNotReached) rather than hand a less sparse model to PQAT.
    """
    from tfqat.optimize import prune

    with distribution.scope():
        pruned = prune.prune_for_stage(float_model, options, stage_steps)
        prune.start_pruning(pruned)
    trained = train("prune", pruned, sparsity_summaries).model  # EMA copy, with the trained masks
    prune.apply_masks(trained)
    prune.check_sparsity(trained, options.target_sparsity, options.exclude, options.m_by_n)
    return prune.strip(trained)


def sparsity_summaries(model, step, writer):
    """TensorBoard: each pruned layer's mask sparsity (as TF-MOT's PruningSummaries logs it).

    PruningSummaries itself reads `model.optimizer`, which a custom loop leaves unset.
    """
    from tfqat.optimize import prune

    sparsity = prune.mask_sparsity(model)
    with writer.as_default(step=step):
        for name, value in sparsity.items():
            tf.summary.scalar(f"sparsity/{name}", value)
        tf.summary.scalar(
            "sparsity/mean_over_pruned_layers", float(np.mean(list(sparsity.values())))
        )


def clone_with_weights(model):
    clone = keras.models.clone_model(model)
    copy_weights(clone, model)
    return clone


def quantizer_range_summaries(model, step, writer):
    """TensorBoard: every QAT quantizer's range, to watch ranges settle (or explode)."""
    from tfqat.optimize import ranges

    with writer.as_default(step=step):
        for name, (low, high) in ranges.quantizer_ranges(model).items():
            tf.summary.scalar(f"quantizer_range/{name}/min", low)
            tf.summary.scalar(f"quantizer_range/{name}/max", high)
