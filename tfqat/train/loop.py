"""The training loop shared by every task and stage: schedule, EMA, checkpoints, NaN guard.

A task object supplies the model-specific parts (loss, validation, summary images); this module
knows nothing of detection or pose.
"""

import dataclasses
import functools
import math
import os
import tempfile
import time

import numpy as np

from tfqat.cli import RunStopped
from tfqat.postprocess.metrics import format_metrics
from tfqat.tf_compat import keras, tf
from tfqat.train.checkpoints import (
    remove_interrupted_saves,
    restore_checked,
    save_checkpoint,
    stage_dir,
)
from tfqat.train.distribute import (
    Distribution,
    copy_weights,
    summary_writer,
    weights_fingerprint,
)


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept untouched."""


@dataclasses.dataclass
class StageConfig:
    name: str
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    optimizer: str = "sgd"
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.01
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    eval_every: int = 1
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `base_lr`, then cosine decay to `base_lr * final_ratio`."""

    def __init__(self, base_lr, total_steps, warmup_steps, final_ratio=0.01, **kwargs):
        super().__init__(**kwargs)
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_ratio = float(final_ratio)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + tf.cos(math.pi * progress))
        return self.base_lr * tf.where(step < warmup, step / warmup, cosine)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_ratio": self.final_ratio,
        }


OPTIMIZERS = {
    "sgd": lambda lr, c: keras.optimizers.SGD(
        lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay, jit_compile=False
    ),
    "adamw": lambda lr, c: keras.optimizers.AdamW(
        lr, weight_decay=c.weight_decay, beta_1=c.momentum, jit_compile=False
    ),
}


@dataclasses.dataclass
class StageResult:
    model: keras.Model  # the EMA weights
    steps: int
    seconds: float  # training wall time, summed over resumed runs
    val_results: list | None = None  # the last validation's COCO results of `model`, if run now


def make_optimizer(config: StageConfig):
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {config.optimizer!r}; choose one of {sorted(OPTIMIZERS)}"
        )
    schedule = WarmupCosine(
        config.learning_rate,
        config.total_steps,
        round(config.warmup_epochs * config.steps_per_epoch),
        config.final_lr_ratio,
    )
    optimizer = OPTIMIZERS[config.optimizer](schedule, config)
    # Batch-norm scales/offsets and biases are not decayed, as in YOLOv8.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Output distillation: the model also learns `teacher`'s outputs (frozen, built in the same
    strategy scope), weighted against the task loss. Ours: TF-MOT's QAT leaves the loss to us."""

    teacher: keras.Model
    weight: float


class ModelEMA:
    """Exponential moving average of every float weight (BN statistics included), as in YOLOv8.

    The decay ramps up as `decay * (1 - exp(-updates / tau))`, so early weights fade fast.
    The averaged weights live in `self.model`, a clone of the trained model.
    """

    def __init__(self, model: keras.Model, decay: float, tau: float):
        self.model = keras.models.clone_model(model)
        copy_weights(self.model, model)
        self.decay = decay
        self.tau = tau
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")

    def update(self, model: keras.Model):
        self.updates.assign_add(1)
        d = self.decay * (1.0 - tf.exp(-tf.cast(self.updates, tf.float32) / self.tau))
        for ema_w, w in zip(self.model.weights, model.weights):
            if _is_pruning_state(ema_w):
                ema_w.assign(w)
            elif ema_w.dtype.is_floating:
                ema_w.assign(d * ema_w + (1.0 - d) * w)


def _is_pruning_state(variable) -> bool:
    """TF-MOT pruning masks and thresholds: copied, never averaged (an averaged 0/1 mask is not a
    mask, and the wrapper multiplies its kernel by it on every call)."""
    return variable.name.endswith(("/mask:0", "/threshold:0"))


def fit(
    task,
    model: keras.Model,
    train_ds,
    config: StageConfig,
    model_dir: str,
    *,
    distribution: Distribution | None = None,
    verbose=1,
    epoch_summaries=None,
    step_hook=None,
    distillation: Distillation | None = None,
):
    """Trains `model` for one stage, resuming from the stage's latest checkpoint.

    `train_ds(start_epoch[, input_context])` returns the (infinite) training dataset, shuffled
    from a seed that depends on `start_epoch`, so a resumed run does not replay the first
    epochs' order; under a strategy (`distribution`, whose scope built `model`) each input
    pipeline gets its `tf.distribute.InputContext` and its part of the data.
    `epoch_summaries(model, step, writer)`, if given, writes stage-specific TensorBoard data
    after every epoch. `step_hook(model, step)`, if given, runs before every training step and
    returns True when it changed the model in a way the traced step cannot see (Python state,
    e.g. `tfqat.optimize.qat_schedule`'s freezes): the step is then traced again.
    `distillation`, if given, adds its loss to the task's (`make_train_step`).
    Returns the EMA model (what gets evaluated and exported; outside any strategy), steps,
    seconds and the COCO results of the last-epoch validation (None if the stage had finished
    before). Checkpoints go to `model_dir/checkpoints/<stage>/` at the end of every epoch; an
    interrupted or failed save leaves the previous checkpoint in force
    (`checkpoints.save_checkpoint`), and a resume fails unless the checkpoint holds every
    variable of the model, its EMA and the optimizer. Only the chief writes into `model_dir`.
    """
    distribution = distribution or Distribution()
    chief = distribution.is_chief
    local = distribution.local_copy(model) if distribution.distributed else None
    with distribution.scope():
        optimizer = make_optimizer(config)
        ema = ModelEMA(model, config.ema_decay, config.ema_tau)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
        checkpoint = tf.train.Checkpoint(
            model=model,
            ema=ema.model,
            ema_updates=ema.updates,
            optimizer=optimizer,
            epoch=epoch,
            seconds=seconds,
        )
        directory = stage_dir(model_dir, config.name)
        manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
        if chief:
            for name in remove_interrupted_saves(directory):
                print(f"[{config.name}] removed {name}, what an interrupted save left")
        # Built before any restore, so that its slots are checked against the checkpoint as well.
        optimizer.build(model.trainable_variables)
        # Every worker resumes from the chief's checkpoint (a shared folder across machines).
        latest = tf.train.latest_checkpoint(directory)
        if latest:
            restore_checked(checkpoint, latest, f"the {config.name} stage's training state")
            if verbose:
                print(f"[{config.name}] resumed from {latest} at epoch {int(epoch.numpy())}")
    start_epoch = int(epoch.numpy())
    if start_epoch >= config.epochs:
        return _result(distribution, ema, local, optimizer, seconds, config.name)

    train_writer, val_writer = summary_writers(model_dir, config.name, distribution)
    step_fn = make_train_step(task, model, optimizer, ema, distribution, distillation)
    if step_hook:
        retrace = functools.partial(
            make_train_step, task, model, optimizer, ema, distribution, distillation
        )
        step_fn = _hooked_step(retrace, model, optimizer, step_hook)
    iterator = iter(distribution.dataset(train_ds, start_epoch))
    if start_epoch == 0 and chief:
        _write_graph(train_writer, local or model)
    val_results = None
    for e in range(start_epoch, config.epochs):
        started = time.perf_counter()
        _run_epoch(step_fn, iterator, config, e, optimizer, train_writer, verbose, distribution)
        with distribution.scope():
            epoch.assign(e + 1)
            seconds.assign_add(time.perf_counter() - started)
        if epoch_summaries and chief:
            epoch_summaries(model, int(optimizer.iterations.numpy()), train_writer)
        if (e + 1) % config.eval_every == 0 or e + 1 == config.epochs:
            # Every worker copies (an all-reduce of batch-norm statistics); the chief validates.
            validated = distribution.local_copy(ema.model, into=local)
            if chief:
                metrics, val_results = task.validate(
                    validated, step=int(optimizer.iterations.numpy()), writer=val_writer
                )
                if verbose:
                    print(
                        f"[{config.name}] epoch {e + 1}/{config.epochs} val "
                        + format_metrics(metrics)
                    )
        _save(distribution, checkpoint, manager, e + 1, f"[{config.name}] epoch {e + 1}")
    result = _result(distribution, ema, local, optimizer, seconds, config.name)
    result.val_results = val_results
    return result


def _result(distribution, ema, local, optimizer, seconds, stage) -> StageResult:
    """The stage's EMA model, outside the strategy, and a fingerprint of it in the log."""
    model = distribution.local_copy(ema.model, into=local)
    if distribution.distributed:
        print(f"[{stage}] EMA weights sha256 {weights_fingerprint(model)}", flush=True)
    return StageResult(model, int(optimizer.iterations.numpy()), float(seconds.numpy()))


def _save(distribution, checkpoint, manager, number: int, what: str):
    """The chief saves into the run; any other worker into a folder it then deletes, as
    MultiWorkerMirroredStrategy needs every worker in a save (it all-reduces what each replica
    keeps for itself)."""
    if distribution.is_chief:
        return save_checkpoint(manager, number, what)
    with tempfile.TemporaryDirectory(prefix="tfqat-worker-checkpoint-") as directory:
        return save_checkpoint(
            tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1), number, what
        )


def summary_writers(model_dir: str, stage: str, distribution: Distribution | None = None):
    """TensorBoard writers of `stage`: `train/<stage>` and `validation/<stage>`.

    Each stage is its own TensorBoard run because each stage's step counts from 0 (its own
    optimizer, schedule and `report.json` steps). Steps continued across stages would not work
    either: float_reference runs the same steps as qat (or pqat) from the same start, and as two
    runs on one step axis the two curves are exactly the comparison it is there for.
    """
    return [
        summary_writer(distribution or Distribution(), os.path.join(model_dir, kind, stage))
        for kind in ("train", "validation")
    ]


def make_train_step(
    task, model, optimizer, ema, distribution: Distribution | None = None, distillation=None
):
    """One training step on every replica: loss, all-reduced gradient, NaN guard, update, EMA.

    With `distillation` (a `Distillation`) the loss adds `weight x task.loss.distillation(
    outputs, teacher outputs)`, logged as "distill".

    Needs no all-reduce besides the gradient's and the losses'.

    The losses normalize by sums over the global batch (`tfqat.losses.global_batch_sum`), so
    the replicas' losses add up to the global batch's, and so do their gradients. Both are
    all-reduced before the NaN guard, so it decides the same on every replica and worker.
    """
    distribution = distribution or Distribution()

    def replica_gradients(images, targets):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses = task.loss(targets, outputs)
            if distillation:
                teacher_outputs = distillation.teacher(images, training=False)
                losses["distill"] = distillation.weight * task.loss.distillation(
                    outputs, teacher_outputs
                )
                losses["total"] += losses["distill"]
        grads = tape.gradient(losses["total"], model.trainable_variables)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        losses = context.all_reduce(tf.distribute.ReduceOp.SUM, losses)
        finite = tf.math.is_finite(losses["total"]) & tf.math.is_finite(
            tf.linalg.global_norm(grads)
        )
        return losses, grads, finite

    def replica_update(grads):
        optimizer.apply_gradients(
            zip(grads, model.trainable_variables), skip_gradients_aggregation=True
        )
        # Each replica averages its own copies: the same weights everywhere, and its own
        # batch-norm statistics, whose mean (what a read returns) is then the EMA of their mean.
        ema.update(model)

    @tf.function
    def step(images, targets):
        losses, grads, finite = distribution.run(replica_gradients, (images, targets))
        losses, finite = distribution.first((losses, finite))
        # A non-finite loss or gradient leaves the weights untouched; Python then stops the run.
        # (The update runs in its own strategy.run: a replica cannot synchronize inside a cond.)
        losses["total"] = tf.where(finite, losses["total"], np.nan)
        if finite:
            distribution.run(replica_update, (grads,))
        return losses

    return step


def _hooked_step(make_step, model, optimizer, step_hook):
    """The training step, traced again whenever `step_hook(model, step)` says it changed the
    model."""
    traced = [make_step()]

    def step(images, targets):
        if step_hook(model, int(optimizer.iterations.numpy())):
            traced[0] = make_step()
        return traced[0](images, targets)

    return step


def _write_graph(writer, model):
    """The model's forward graph, for TensorBoard's Graphs tab."""
    images_spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(images_spec).graph
    with writer.as_default():
        tf.summary.graph(graph)
    writer.flush()


def _run_epoch(step_fn, iterator, config, epoch, optimizer, writer, verbose, distribution):
    progbar = keras.utils.Progbar(
        config.steps_per_epoch, verbose=verbose, stateful_metrics=["lr", "img/s"]
    )
    start = time.perf_counter()
    batch = None
    for i in range(config.steps_per_epoch):
        images, targets = next(iterator)
        batch = distribution.local_batch(images)
        losses = step_fn(images, targets)
        values = {k: float(v) for k, v in losses.items()}
        step = int(optimizer.iterations.numpy())
        if not np.isfinite(values["total"]):
            raise TrainingDiverged(
                f"[{config.name}] loss became {values['total']} at epoch {epoch + 1}, step {step} "
                f"({', '.join(f'{k}={v}' for k, v in values.items())}). Training stopped; the last "
                "good checkpoint is kept. Lower --lr or check the dataset with "
                "tools/inspect_dataset.py."
            )
        lr = float(optimizer.learning_rate.numpy())
        if step % 10 == 0 or i + 1 == config.steps_per_epoch:
            with writer.as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(f"loss/{k}", v)
                tf.summary.scalar("learning_rate", lr)
        rate = (i + 1) * batch / (time.perf_counter() - start)
        progbar.update(i + 1, [(k, v) for k, v in values.items()] + [("lr", lr), ("img/s", rate)])
    writer.flush()
