"""Where a run keeps its weights (`<model_dir>/checkpoints/<stage>/`), saving and restoring them.

Each stage's checkpoint holds the EMA model as `ema` (what is evaluated and exported) beside
the training state `fit` resumes from.

Every restore proves itself: each variable of the model (or training state) must be in the
checkpoint with its shape, else `CheckpointMismatch` names the checkpoint and the first
variables that do not fit. The one exception is `--init_checkpoint` into another head (same
backbone, another number of classes or keypoints): the output convolutions whose shapes differ
keep their initial values and are named to the caller.
"""

import collections
import os
import re
import shutil

from tfqat.tf_compat import tf

# The float stages whose EMA weights are "the float model", latest first.
FLOAT_STAGES = ("float_reference", "float")
# The quantization stages and the TF-MOT scheme each trains (and restores) its model with:
# "pqat" keeps the pruned zeros.
QAT_SCHEMES = {"qat": "default", "pqat": "prune_preserve"}
# How many unmatched variables an error message names.
NAMED_IN_ERRORS = 3


class CheckpointMismatch(ValueError):
    """A checkpoint does not hold every variable of what is restored from it."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk); the previous one is still the latest."""


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


def remove_interrupted_saves(directory: str) -> list[str]:
    """Removes the `ckpt-N_temp/` folders a killed save leaves (a partial data file, as large
    as a checkpoint): never read, and TensorFlow's next save of N writes a file of another
    name. Returns their names. Only one process trains a run directory at a time."""
    if not os.path.isdir(directory):
        return []
    leftovers = sorted(n for n in os.listdir(directory) if re.fullmatch(r"ckpt-\d+_temp", n))
    for name in leftovers:
        shutil.rmtree(os.path.join(directory, name))
    return leftovers


def save_checkpoint(manager: tf.train.CheckpointManager, number: int, what: str) -> str:
    """`manager.save(number)`, or CheckpointSaveError naming the checkpoint still in force.

    TensorFlow writes the data into `ckpt-N_temp/`, merges it into `ckpt-N.index` / `.data`, and
    only then rewrites the `checkpoint` state file (temporary file + rename) and deletes the
    checkpoints beyond `max_to_keep`. A failed write (TensorFlow raises ResourceExhaustedError
    for a full disk) therefore leaves the previous checkpoint the latest, untouched.
    """
    try:
        return manager.save(checkpoint_number=number)
    except (OSError, tf.errors.OpError) as e:
        target = f"{manager.directory}/ckpt-{number}"
        # What is left of the failed write frees its space (a rerun would overwrite it anyway).
        shutil.rmtree(f"{target}_temp", ignore_errors=True)
        if manager.latest_checkpoint:
            kept = f"the latest checkpoint is still {manager.latest_checkpoint}, and a rerun "
            kept += "resumes from it"
        else:
            kept = "the stage has no checkpoint yet, and a rerun starts it over"
        # TensorFlow's message ends with the reason, after its op and temporary file names.
        reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[-1].split("; ")[-1]
        error = CheckpointSaveError(f"{what}: could not write {target} ({reason}); {kept}")
        error.errno = getattr(e, "errno", None)
        raise error from e


def variable_keys(root) -> dict:
    """{checkpoint key: variable} of every variable `tf.train.Checkpoint` saves under `root`.

    TensorFlow keys a variable by the shortest path of child names from the root (breadth
    first, children in `_trackable_children` order, which `tf.train.TrackableView.children`
    returns), escaped as in its `trackable_utils.escape_local_name`. `root` is a
    `tf.train.Checkpoint(name=obj, ...)`, or the model itself for a `model.save_weights` file.
    """
    paths = {id(root): ""}
    keys = {}
    queue = collections.deque([root])
    while queue:
        node = queue.popleft()
        for name, child in tf.train.TrackableView.children(node).items():
            if id(child) in paths:
                continue
            escaped = name.replace(".", "..").replace("/", ".S")
            paths[id(child)] = f"{paths[id(node)]}/{escaped}" if paths[id(node)] else escaped
            queue.append(child)
            if isinstance(child, tf.Variable):
                keys[f"{paths[id(child)]}/.ATTRIBUTES/VARIABLE_VALUE"] = child
    return keys


def restore_checked(root, path: str, what: str, skippable=()) -> list[str]:
    """Restores every variable under `root` (see `variable_keys`) from the checkpoint `path`.

    A variable missing from the checkpoint, or there with another shape, is a
    CheckpointMismatch naming `path`, `what` was being restored and the first such variables;
    except a variable of `skippable` with another shape, which keeps its value. Returns the
    skipped ones as "name (shape here; checkpoint: shape)". The checkpoint may hold more than
    `root` (a stage's checkpoint holds the optimizer too; restoring its `ema` ignores the rest).
    """
    keys = variable_keys(root)
    shapes = dict(tf.train.list_variables(path))
    entries = isinstance(root, tf.train.Checkpoint)
    missing = [key for key in keys if key not in shapes]
    reshaped = [key for key in keys if key in shapes and shapes[key] != keys[key].shape.as_list()]
    skip_ids = {id(v) for v in skippable}
    skipped = [key for key in reshaped if id(keys[key]) in skip_ids]
    unfit = [key for key in reshaped if id(keys[key]) not in skip_ids]
    if missing or unfit:
        raise CheckpointMismatch(
            _mismatch_message(path, what, keys, shapes, missing, unfit, entries)
        )
    if skipped or not entries:
        # The skipped ones keep their values, and a model root (a `save_weights` file) has no
        # tf.train.Checkpoint around it to restore with: variable by variable, as checked above.
        reader = tf.train.load_checkpoint(path)
        for key, variable in keys.items():
            if key not in skipped:
                variable.assign(reader.get_tensor(key))
    else:
        _restore_with_status(root, path, what)
    return [_describe(key, keys[key], entries, shapes[key]) for key in skipped]


def _restore_with_status(checkpoint: tf.train.Checkpoint, path: str, what: str):
    """TensorFlow's restore, then its own check that every existing object got a value.

    expect_partial: the file may hold more than `checkpoint` (an `ema` alone of a stage's).
    """
    status = checkpoint.restore(path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise CheckpointMismatch(f"{path} does not fit {what}: {e}") from e


def _mismatch_message(path, what, keys, shapes, missing, unfit, entries) -> str:
    parts = []
    if missing:
        named = _first_few([_describe(k, keys[k], entries) for k in missing])
        parts.append(f"{len(missing)} of its {len(keys)} variables are not in it ({named})")
    if unfit:
        named = _first_few([_describe(k, keys[k], entries, shapes[k]) for k in unfit])
        verb = "has" if len(unfit) == 1 else "have"
        parts.append(f"{len(unfit)} {verb} another shape ({named})")
    return f"{path} does not fit {what}: " + "; ".join(parts)


def _first_few(names: list[str]) -> str:
    more = ", ..." if len(names) > NAMED_IN_ERRORS else ""
    return ", ".join(names[:NAMED_IN_ERRORS]) + more


def _describe(key: str, variable, entries: bool, checkpoint_shape=None) -> str:
    """A variable as a user knows it: its Keras name, after the checkpoint entry it is under
    when there are several ("ema:cls_p3/kernel"; a model and its EMA copy share layer names),
    and with `checkpoint_shape`, both shapes."""
    name = variable.name.removesuffix(":0")
    if entries:
        name = f"{key.split('/', 1)[0]}:{name}"
    if checkpoint_shape is None:
        return name
    shapes = [",".join(str(d) for d in s) for s in (variable.shape, checkpoint_shape)]
    return f"{name} ({shapes[0]}; checkpoint: {shapes[1]})"


def restore_stage_model(task, model_dir: str, stage: str):
    """A float model of `task` with the EMA weights of `stage`'s latest checkpoint."""
    model = task.build_model()
    latest = latest_checkpoint(model_dir, stage)
    if latest is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint of the {stage} stage yet")
    restore_checked(tf.train.Checkpoint(ema=model), latest, f"the {stage} model of this task")
    return model


def restore_export_models(task, model_dir: str, stages) -> dict:
    """{"keras_float", "keras_qat"} of a finished QAT or PQAT run, from its checkpoints."""
    qat_model = restore_qat_model(task, model_dir, stages)
    float_model = restore_stage_model(task, model_dir, latest_float_stage(model_dir))
    return {"keras_float": float_model, "keras_qat": qat_model}


def restore_qat_model(task, model_dir: str, stages):
    """The QAT (or PQAT) model of a run, with the EMA weights of its stage's latest checkpoint."""
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
    restore_checked(tf.train.Checkpoint(ema=qat_model), latest, f"the {stage} model of this task")
    return qat_model


def head_variables(model) -> list:
    """The variables of the layers whose outputs are the model's outputs (the head convs whose
    shape follows the number of classes or keypoints)."""
    return [w for name in model.output_names for w in model.get_layer(name).weights]


def load_float_weights(model, checkpoint: str) -> list[str]:
    """Loads weights a user brings (`--init_checkpoint`) into a float model.

    `checkpoint` is a tfqat run directory (its float stage's EMA weights), a TF checkpoint
    prefix (its `model`, else its `ema`, else a `model.save_weights` file) or a Keras `.h5`
    (loaded by Keras, which fails on any difference). Every variable must be in the checkpoint
    with its shape, except the output convolutions of another head: those keep their initial
    values and come back as "name (shape here; checkpoint: shape)".
    """
    what = "this model (--init_checkpoint)"
    if checkpoint.endswith(".h5"):
        try:
            model.load_weights(checkpoint)
        except ValueError as e:
            raise CheckpointMismatch(f"{checkpoint} does not fit {what}: {e}") from e
        return []
    if os.path.isdir(checkpoint):
        path = latest_checkpoint(checkpoint, "float")
        if path is None:
            raise FileNotFoundError(f"--init_checkpoint={checkpoint}: no float checkpoint in it")
        root = tf.train.Checkpoint(ema=model)
    else:
        path = checkpoint
        root = _user_checkpoint_root(model, path)
    return restore_checked(root, path, what, skippable=head_variables(model))


def _user_checkpoint_root(model, path: str):
    """What `model` is in a checkpoint prefix: its `model` or `ema` entry (a tf.train.Checkpoint
    such as a tfqat stage's), or the root itself (a `model.save_weights` file)."""
    try:
        names = {key.split("/", 1)[0] for key, _ in tf.train.list_variables(path)}
    except (tf.errors.OpError, ValueError) as e:
        raise FileNotFoundError(f"--init_checkpoint={path}: not a TF checkpoint ({e})") from e
    for name in ("model", "ema"):
        if name in names:
            return tf.train.Checkpoint(**{name: model})
    return model
