"""Bytes all-gathered per train step and replica: shuffle BN gathering whole key outputs
(before) against keys reduced on their own replica (after), at the 8-GPU config.

The figures are computed from shapes by `vader_tf.training.traffic.all_gather_bytes`
(VADeR as the config trains it, and MoCo and DenseCL on the same config). The function is
checked against a traced step on 2 logical CPU replicas: every `all_gather` the step
traces is recorded with its input's shape and dtype, and their total (R times the
inputs) must equal the function's prediction, for each method, on today's step and on
the step with the keys gathered whole (the reduction moved after the gather, as before).

    python -m benchmarks.shuffle_bn_traffic [--quick]
"""

import os

import tensorflow as tf
from absl import flags

from benchmarks import common
from vader_tf.config_flags import define_flags, from_flags
from vader_tf.training import distribution, traffic
from vader_tf.training.pretrain import PretrainConfig, build_model

NAME = "shuffle_bn_traffic"
CONFIG_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments", "configs", "imagenet_resnet50_8gpu.cfg",
)
REPLICAS = 8  # the config's 8 GPUs
METHODS = ("vader", "moco", "densecl")
MB = 1e6


def flagfile_config(path, **overrides):
    """The `PretrainConfig` of a flag file, as `experiments/pretrain.py` would read it."""
    flag_values = flags.FlagValues()
    define_flags(PretrainConfig, flag_values)
    flag_values(["shuffle_bn_traffic", f"--flagfile={path}"])
    return from_flags(PretrainConfig, flag_values, **overrides)


def _gathered_whole(model):
    """Makes `model` gather its key outputs whole and reduce them after the gather (the
    step before `reduce_keys` ran on the key's replica)."""
    reduce_keys, reduction_inputs, rows = (
        model.reduce_keys, model.key_reduction_inputs, model.contrastive_rows
    )

    def contrastive_rows(data, query_outputs, key_outputs):
        key_outputs = [
            None if k is None else reduce_keys(k, reduction_inputs(data, v))
            for v, k in enumerate(key_outputs)
        ]
        return rows(data, query_outputs, key_outputs)

    model.key_reduction_inputs = lambda data, view_index: None
    model.reduce_keys = lambda outputs, inputs: outputs
    model.contrastive_rows = contrastive_rows
    return model


def traced_all_gather_bytes(strategy, model, batch):
    """`(bytes, count)` per replica of the results of the `all_gather`s one step makes.

    Every `all_gather` the traced step calls adds its result's size (R times its input,
    read at run time: some shapes are dynamic) to a counter; the step then runs once.
    """
    total = tf.Variable(0, dtype=tf.int64, trainable=False)
    count = tf.Variable(0, dtype=tf.int64, trainable=False)
    original = tf.distribute.ReplicaContext.all_gather

    def recording(self, value, axis, options=None):
        for x in tf.nest.flatten(value):
            size = tf.cast(tf.size(x), tf.int64) * x.dtype.size * self.num_replicas_in_sync
            total.assign_add(size)
            count.assign_add(1)
        return original(self, value, axis, options)

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    step = tf.function(lambda b: strategy.run(model.train_step, args=(b,)))
    tf.distribute.ReplicaContext.all_gather = recording
    try:
        step(next(iter(dataset)))
    finally:
        tf.distribute.ReplicaContext.all_gather = original
    # Every replica runs the step: one replica's share.
    replicas = strategy.num_replicas_in_sync
    return int(total.numpy()) // replicas, int(count.numpy()) // replicas


def traced_check(quick):
    """Prediction against the traced 2-replica step, per method, before and after."""
    strategy = distribution.create_strategy("mirrored", num_cpu_devices=2)
    fields = dict(image_size=64, batch_size=8, num_points=8, queue_size=64,
                  queue_points_per_image=4, decoder_channels=16, embedding_dim=8,
                  bn_groups=2, mixed_precision="none")
    results = {}
    for method in METHODS[:1] if quick else METHODS:
        config = PretrainConfig(method=method, **fields)
        batch = common.pipeline_batch(config)
        for name, gathered_whole in (("after", False), ("before", True)):
            with strategy.scope():
                model = build_model(config)
                model.optimizer.build(model.query_model.trainable_variables)
            predicted = traffic.all_gather_bytes(
                model, config.batch_size // 2, config.image_size, config.num_points, 2,
                gathered_whole,
            )["total"]
            if gathered_whole:
                _gathered_whole(model)
            traced, gathers = traced_all_gather_bytes(strategy, model, batch)
            results[f"{method}_{name}"] = {
                "predicted_bytes": predicted,
                "traced_bytes": traced,
                "traced_all_gathers": gathers,
                "equal": predicted == traced,
            }
    summary = common.config_summary(
        config, "backbone", "image_size", "batch_size", "num_points", "bn_groups"
    )
    return summary, results


def _megabytes(gathered):
    """`all_gather_bytes`' result flattened, in MB."""
    flat = {**gathered["shuffle_bn"], "enqueue": gathered["enqueue"], "total": gathered["total"]}
    return {k: v / MB for k, v in flat.items()}


def run(quick):
    check_config, check = traced_check(quick)
    if not all(r["equal"] for r in check.values()):
        raise AssertionError(f"all_gather_bytes disagrees with the traced step: {check}")
    overrides = dict(image_size=64, batch_size=16, backbone="resnet18") if quick else {}
    per_method = {}
    for method in METHODS[:1] if quick else METHODS:
        config = flagfile_config(CONFIG_FILE, method=method, **overrides)
        before = traffic.config_all_gather_bytes(config, REPLICAS, gathered_whole=True)
        after = traffic.config_all_gather_bytes(config, REPLICAS)
        per_method[method] = {
            "before_mb": _megabytes(before),
            "after_mb": _megabytes(after),
            "keys_before_over_after": before["shuffle_bn"]["keys"] / after["shuffle_bn"]["keys"],
            "total_before_over_after": before["total"] / after["total"],
        }
    config = flagfile_config(CONFIG_FILE, **overrides)
    summary = {
        **common.config_summary(config, "method", "backbone", "image_size", "batch_size",
                                "num_points", "embedding_dim", "bn_groups", "mixed_precision",
                                "symmetric_loss"),
        "config_file": os.path.relpath(CONFIG_FILE, os.path.dirname(os.path.dirname(CONFIG_FILE))),
        "replicas": REPLICAS,
        "traced_check_config": check_config,
    }
    return summary, {
        "units": "MB (1e6 bytes) all-gathered per step and replica (the gathered results)",
        **per_method,
        "traced_check_two_replicas": check,
    }


if __name__ == "__main__":
    distribution.split_cpu(2)  # before TensorFlow initialises its devices
    common.main(NAME, run, __doc__)
