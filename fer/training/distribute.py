"""Where training runs: one device, all of a machine's GPUs, or several machines.

The `distribute` setting picks a tf.distribute strategy:

- `auto` (default): MirroredStrategy over all visible GPUs when there are two
  or more; otherwise TensorFlow's default strategy (one device);
- `mirrored`: MirroredStrategy over all visible GPUs (over the logical CPUs of
  `FER_LOGICAL_CPUS`, or the one CPU, when there is no GPU);
- `multi_worker`: MultiWorkerMirroredStrategy over the cluster in `TF_CONFIG`
  (every worker runs the same command; without TF_CONFIG it is one worker);
- `none`: the default strategy.

`batch_size` is per replica: each step trains on batch_size x replicas faces.

Only the chief logs to MLflow, so a multi-worker run is one MLflow run. The
chief is the task of type "chief", or worker 0 when the cluster has no chief
(TensorFlow's rule), or the only process when there is no TF_CONFIG.

Testing aid: `FER_LOGICAL_CPUS=N` splits the CPU into N logical devices before
TensorFlow starts, so `mirrored` has N replicas on a machine with no GPU.

Keras 3 (up to 3.15 at least) cannot `fit` under MultiWorkerMirroredStrategy
with more than one worker (keras-team/keras#20585): it reduces the first
(x, y) batch and every step's scalar logs in ways TensorFlow rejects across
workers. `_patch_keras_for_multi_worker` fixes those two reductions, and only
takes effect when a strategy spans several workers.
"""

from __future__ import annotations

import json
import os

STRATEGIES = ("auto", "mirrored", "multi_worker", "none")
# Strategy classes under their public names, as runs record them.
PUBLIC_NAMES = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy", "_DefaultDistributionStrategy": "default"}
LOGICAL_CPUS_ENV = "FER_LOGICAL_CPUS"


def choose_strategy(config):
    """The tf.distribute strategy `config.distribute` names.

    Call it before any other TensorFlow work: logical devices can only be set,
    and MultiWorkerMirroredStrategy only be created, before TensorFlow starts
    its runtime.
    """
    import tensorflow as tf

    _split_cpu(tf)
    if config.distribute == "multi_worker":
        _patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.distribute == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    if config.distribute == "auto" and len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()  # all visible GPUs
    return tf.distribute.get_strategy()  # the default strategy: one device, no replicas to sync


def replicas(strategy) -> int:
    """How many copies of the model train in step (over all workers)."""
    return int(strategy.num_replicas_in_sync)


def global_batch_size(batch_size: int, strategy) -> int:
    """The batch one step trains on: `batch_size` per replica."""
    return batch_size * replicas(strategy)


def params(strategy, batch_size: int) -> dict:
    """What a run logs about its distribution (`config.distribute` says what was asked for)."""
    name = type(strategy).__name__
    return {
        "distribute.strategy": PUBLIC_NAMES.get(name, name),
        "distribute.replicas": replicas(strategy),
        "distribute.workers": worker_count(),
        "distribute.global_batch_size": global_batch_size(batch_size, strategy),
    }


def for_chief_alone(model):
    """The trained model, for what the chief does alone after training: evaluate it, save it.

    Across workers the trained model's predict would gather results from
    workers that have finished, and tf.data would shard the test set between
    them; so the chief gets a copy of its weights outside the strategy.
    """
    if worker_count() < 2:
        return model
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def cluster() -> dict:
    """TF_CONFIG as a dict ({} when unset)."""
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def is_chief() -> bool:
    """Whether this process is the one that logs to MLflow."""
    tf_config = cluster()
    task = tf_config.get("task") or {}
    if not task:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})


def worker_count() -> int:
    """How many training processes the cluster has (chief included); 1 without TF_CONFIG."""
    spec = cluster().get("cluster", {})
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def task_name() -> str:
    """This process in the cluster, e.g. "worker-1" ("chief" without TF_CONFIG)."""
    task = cluster().get("task") or {}
    return f"{task['type']}-{task.get('index', 0)}" if task else "chief"


def _split_cpu(tf) -> None:
    """Turn the CPU into FER_LOGICAL_CPUS logical devices (a testing aid for `mirrored` without GPUs)."""
    count = os.environ.get(LOGICAL_CPUS_ENV)
    if not count or int(count) < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == int(count):
        return  # already split (a second run in the same process)
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError as err:  # TensorFlow's runtime had started already
        raise RuntimeError(f"{LOGICAL_CPUS_ENV} must be set before TensorFlow starts in this process: {err}") from None


def _patch_keras_for_multi_worker() -> None:
    """Make Keras's TensorFlow trainer reduce correctly across workers (keras-team/keras#20585).

    1. Before the first step Keras reduces the first distributed (x, y) batch
       with `strategy.reduce`, only to learn its shapes; that fails across
       workers for a tuple. The local part of the batch has the same shapes.
    2. Each step's logs (scalar loss and metrics, per worker) are averaged with
       `strategy.reduce("MEAN", v, axis=0)`, which fails for a scalar; a
       scalar needs `axis=None`. The mean over workers is what Keras means.
    Both only act when the strategy spans several workers; elsewhere Keras runs as it is.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_fer_multi_worker_patch", False):
        return
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "TensorFlowTrainer")
    if not all(hasattr(trainer, name) for name in needed) or not hasattr(
        trainer.TensorFlowTrainer, "_maybe_symbolic_build"
    ):
        return  # Keras changed these internals (and perhaps fixed the issue): leave it alone
    across_workers = trainer._collective_all_reduce_multi_worker
    reduce_per_replica = trainer.reduce_per_replica
    maybe_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values, strategy, reduction):
        if reduction in ("auto", "mean") and across_workers(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values
            )
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and across_workers(strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v,
                    next(batches),
                )
                break
            iterator = None
        return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_logs
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer._fer_multi_worker_patch = True
