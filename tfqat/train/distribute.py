"""Data-parallel training under tf.distribute: the strategy, which worker writes, and the
non-distributed copies that leave it.

`make_strategy` must run before any other TensorFlow op (MultiWorkerMirroredStrategy starts the
worker's server and TensorFlow refuses to once it has initialized); `python -m tfqat.train` calls
it right after its flags are checked. The training loop takes a `Distribution`: every variable
of a stage (model, TF-MOT wrappers, optimizer, EMA) is created under `scope()`; models that
leave training (validation, export, evaluation) are plain copies made by `local_copy`, because
the TFLite converter fails on a model built under a strategy.
"""

import contextlib
import dataclasses
import hashlib
import re

from tensorflow.python.eager import context  # the coordination service's barrier has no tf.* API

from tfqat.cli import RunStopped
from tfqat.tf_compat import keras, tf

# How long the other workers wait for the chief's export and evaluation (a dead chief fails
# the wait at once: its coordination service is gone).
END_BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000


def split_cpu(replicas: int):
    """Splits the CPU into `replicas` logical devices, so that `mirrored` has that many replicas
    on a machine without GPUs (a test aid: they share the same cores)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )


def cluster_resolver(kind: str):
    """TensorFlow's resolver of the cluster: TF_CONFIG (`tf_config`) or Slurm's variables."""
    if kind == "slurm":
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    if kind == "tf_config":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    raise ValueError(f"unknown cluster resolver {kind!r}; choose tf_config or slurm")


def make_strategy(kind: str, resolver: str, cpu_replicas: int, collective_timeout: float):
    """The Distribution of `--strategy` (see the module docstring for when to call it).

    `default` is TensorFlow's default strategy (one device). `mirrored` takes every GPU of the
    machine, else the CPU's logical devices (`cpu_replicas`). `multi_worker` is
    MultiWorkerMirroredStrategy on the cluster `resolver` describes; it waits until every worker
    of the cluster has started. A worker that dies is found by TensorFlow's coordination
    service (missing heartbeats), which aborts every all-reduce of the others. With
    `collective_timeout` > 0 an all-reduce also fails after that many seconds (a worker alive
    but stuck); TensorFlow 2.21 then keeps a sleeping thread per all-reduce op for as long
    (measured: +2 threads per op executed), thousands after a few training steps.
    """
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
    return Distribution(_strategy(kind, resolver, collective_timeout))


def _strategy(kind, resolver, collective_timeout):
    if kind == "default":
        return None
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout or None
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver(resolver), communication_options=options
        )
    raise ValueError(f"unknown strategy {kind!r}; choose default, mirrored or multi_worker")


@dataclasses.dataclass
class Distribution:
    """A strategy and this process's part in it. `Distribution()`: one device, one process."""

    strategy: tf.distribute.Strategy | None = None  # None: TensorFlow's default strategy

    @property
    def distributed(self) -> bool:
        return self.strategy is not None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.distributed else 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory (checkpoints, TensorBoard, report)."""
        return not self.distributed or self.strategy.extended.should_checkpoint

    @property
    def worker(self) -> str:
        """This process in messages: "worker 1 (127.0.0.1:2223)", or "" outside a cluster."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or resolver.task_type is None:
            return ""
        address = resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)
        return f"{resolver.task_type} {resolver.task_id} ({address})"

    @contextlib.contextmanager
    def stop_on_peer_failure(self):
        """Turns a failed all-reduce (a worker died, or one waited past the collective timeout)
        into RunStopped naming the workers TensorFlow reports, with what to do next."""
        try:
            yield
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
            if not self.worker:  # not one of several workers
                raise
            raise RunStopped(self._peer_failure(e)) from e

    def _peer_failure(self, error) -> str:
        text = getattr(error, "message", None) or str(error)
        spec = self.strategy.cluster_resolver.cluster_spec()
        named = []
        for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text):
            label = f"{job} {task} ({spec.task_address(job, int(task))})"
            if label not in named:
                named.append(label)
        if named:
            what = f"{', '.join(named)} stopped"
        elif isinstance(error, tf.errors.DeadlineExceededError):
            what = "an all-reduce waited longer than --collective_timeout for the other workers"
        else:
            what = text.strip().splitlines()[0]
        return (
            f"{self.worker}: training stopped: {what}. Restart every worker with the same "
            "command: they resume from the chief's last checkpoint"
        )

    @contextlib.contextmanager
    def end_together(self):
        """Every worker leaves the block when all have reached its end: the others wait there
        while the chief exports and evaluates.

        A worker that exits while the chief still works is, to TensorFlow's coordination
        service, a crashed task: the chief logs "tasks are unhealthy" and aborts its collectives
        (tensorflow/tensorflow#58434).
        """
        try:
            yield
        finally:
            if self.worker:  # one of several processes
                context.context().wait_at_barrier("tfqat_run_end", END_BARRIER_TIMEOUT_MS)

    def scope(self):
        return self.strategy.scope() if self.distributed else contextlib.nullcontext()

    def run(self, fn, args=()):
        """`fn(*args)` on every replica (strategy.run): per-replica results."""
        strategy = self.strategy or tf.distribute.get_strategy()
        return strategy.run(fn, args=args)

    def first(self, value):
        """This process's first replica's part of a per-replica value (after an all-reduce, every
        replica holds the same)."""
        strategy = self.strategy or tf.distribute.get_strategy()
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)

    def dataset(self, make_dataset, start_epoch: int):
        """`make_dataset(start_epoch, input_context)` for each of this worker's input pipelines.

        Each pipeline shards the data itself (tasks.common.input_shard); nothing is auto-sharded
        (distribute_datasets_from_function never does).
        """
        if not self.distributed:
            return make_dataset(start_epoch)
        return self.strategy.distribute_datasets_from_function(
            lambda context: make_dataset(start_epoch, context)
        )

    def local_batch(self, images) -> int:
        """How many images a step of this process trained on, over its replicas."""
        if not self.distributed:
            return int(images.shape[0])
        return sum(int(x.shape[0]) for x in self.strategy.experimental_local_results(images))

    def local_copy(self, model, into=None):
        """A model outside the strategy with the weights of `model` (a QAT model: inside
        `qat.qat_scope()`); `into`, a copy made earlier, is updated instead of cloned again.
        Call it outside `scope()`. Without a strategy, `model` itself.

        Every worker must call it together: reading variables that each replica keeps for
        itself (batch-norm statistics) averages them over the replicas with an all-reduce.
        """
        if not self.distributed:
            return model
        if into is None:
            into = keras.models.clone_model(model)
        with self.scope():
            copy_weights(into, model)
        return into


def copy_weights(target, source):
    """`target.set_weights(source.get_weights())` in one graph, for models of the same
    architecture, inside or outside a strategy's scope.

    Eagerly, under MultiWorkerMirroredStrategy, reading (and even assigning) a variable each
    replica keeps for itself is one all-reduce per variable, each with its own threads: hundreds
    of them made a worker fail to start a thread. Traced, they run as one graph.
    """
    if len(target.weights) != len(source.weights):
        raise ValueError(
            f"{target.name} has {len(target.weights)} weights, {source.name} "
            f"{len(source.weights)}: not the same architecture"
        )

    @tf.function
    def copy():
        for to, value in zip(target.weights, source.weights):
            to.assign(value, read_value=False)

    copy()


def weights_fingerprint(model) -> str:
    """sha256 over a model's weights, in order: the same on every worker of a run."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()


def summary_writer(distribution: Distribution, path: str):
    """A TensorBoard writer of `path` on the chief; one that writes nothing elsewhere."""
    if distribution.is_chief:
        return tf.summary.create_file_writer(path)
    return tf.summary.create_noop_writer()
