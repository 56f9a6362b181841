"""Recipe flags -> the objects the library takes: datasets, the task, stage configs, pruning.

The model family is chosen by `--task` through one visible mapping, `TASKS`.
"""

import os

from tfqat.recipe.flags import PATH_FLAGS


def input_size(fv) -> tuple[int, int]:
    return tuple(int(v) for v in fv.input_size)


def dataset_paths(fv) -> dict:
    """The four COCO paths of the recipe, absolute; the synthetic default is made once."""
    if fv.train_annotations:
        return {f: os.path.abspath(getattr(fv, f)) for f in PATH_FLAGS}
    from tfqat.data.synthetic import DEFAULT_IMAGE_SIZE, ensure_synthetic

    # Detection images are made at the model's input size; pose crops come from full-size
    # synthetic images, whatever the crop size.
    image_size = max(input_size(fv)) if fv.task == "detection" else DEFAULT_IMAGE_SIZE
    return ensure_synthetic(
        fv.task,
        num_train=fv.num_train,
        num_val=fv.num_val,
        seed=fv.synthetic_seed,
        image_size=image_size,
    )


def load_datasets(fv, paths: dict) -> list:
    """[train, val] CocoDatasets of `paths`, validated with the recipe's settings: both
    annotation files first, then every image."""
    from tfqat.data.coco import load_coco_splits

    return load_coco_splits(
        [(paths[f"{split}_annotations"], paths[f"{split}_images"]) for split in ("train", "val")],
        fv.task,
        exif_transpose=fv.exif_transpose,
        annotation_problems=fv.annotation_problems,
    )


def _detection_task(fv, train, val):
    from tfqat.tasks.detection import DetectionConfig, DetectionTask

    config = DetectionConfig(
        input_size=input_size(fv),
        model_size=fv.model_size,
        activation=fv.activation,
        batch_size=fv.batch_size,
        augment=fv.augment,
        mosaic=fv.mosaic,
        jitter=tuple(float(v) for v in fv.jitter),
        min_box_size=fv.min_box_size,
        memory_cache_mb=fv.memory_cache_mb,
        seed=fv.seed,
    )
    return DetectionTask(config, train, val)


def _pose_task(fv, train, val):
    from tfqat.tasks.pose import PoseConfig, PoseTask

    config = PoseConfig(
        input_size=input_size(fv),
        model_size=fv.model_size,
        activation=fv.activation,
        batch_size=fv.batch_size,
        augment=fv.augment,
        flip_prob=fv.flip_prob,
        scale_range=tuple(float(v) for v in fv.scale_range),
        rotation_prob=fv.rotation_prob,
        max_rotation=fv.rotation,
        seed=fv.seed,
    )
    return PoseTask(config, train, val)


# --task -> the builder of its task (model family, loss, data, metrics).
TASKS = {"detection": _detection_task, "pose": _pose_task}


def make_task(fv, train, val):
    """The task of `--task` on the given train and val CocoDatasets."""
    if fv.task not in TASKS:
        raise ValueError(f"--task={fv.task} is not one of {sorted(TASKS)}")
    return TASKS[fv.task](fv, train, val)


def stage_configs(fv, steps_per_epoch: int):
    from tfqat.train.loop import StageConfig

    def stage(name, epochs, lr, warmup_epochs):
        return StageConfig(
            name=name,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            learning_rate=lr,
            optimizer=fv.optimizer,
            momentum=fv.momentum,
            weight_decay=fv.weight_decay,
            warmup_epochs=warmup_epochs,
            final_lr_ratio=fv.final_lr_ratio,
            ema_decay=fv.ema_decay,
            ema_tau=fv.ema_tau,
            eval_every=fv.eval_every,
            seed=fv.seed,
        )

    stages = [stage("float", fv.epochs, fv.lr, fv.warmup_epochs)]
    # The float_reference* stages continue the float model with the schedules and data order of
    # the stages after float, so keras_float has trained exactly as long as keras_qat.
    if "prune" in fv.stages:
        stages += [
            stage("prune", fv.prune_epochs, fv.prune_lr, 0.0),
            stage("float_reference_prune", fv.prune_epochs, fv.prune_lr, 0.0),
        ]
    for name in ("qat", "pqat"):
        if name in fv.stages:
            stages += [
                stage(name, fv.qat_epochs, fv.qat_lr, 0.0),
                stage("float_reference", fv.qat_epochs, fv.qat_lr, 0.0),
            ]
    return stages


def pruning_options(fv):
    from tfqat.optimize.prune import PruningOptions

    m_by_n = tuple(int(v) for v in fv.m_by_n) if fv.m_by_n else None
    return PruningOptions(
        target_sparsity=fv.target_sparsity,
        schedule=fv.pruning_schedule,
        end_fraction=fv.pruning_end,
        exclude=tuple(fv.prune_exclude),
        m_by_n=m_by_n,
    )


def qat_options(fv):
    from tfqat.optimize.qat_schedule import QatOptions

    return QatOptions(
        activation_quantizer=fv.qat_activation_quantizer,
        freeze_bn_after=fv.qat_freeze_bn_after,
        freeze_ranges_after=fv.qat_freeze_ranges_after,
        distillation=fv.qat_distillation,
    )
