"""Choosing a `tf.distribute` strategy: one device, several GPUs, several logical CPUs,
or several machines (`TF_CONFIG`)."""

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def split_cpu(num_devices):
    """Splits the physical CPU into `num_devices` logical devices.

    Lets the multi-replica code path run without GPUs. Must be called before TensorFlow
    initialises its devices (before any op runs).
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )


def cluster_worker_count():
    """Number of workers named by `TF_CONFIG`, or 0 when it names no cluster."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def create_strategy(name="auto", num_cpu_devices=1):
    """Creates the strategy to train under.

    Args:
        name: "auto" (several machines if `TF_CONFIG` names a cluster, else all GPUs when
            there are several, else all logical CPUs when `num_cpu_devices > 1`, else the
            default single-device strategy), "default", "mirrored" or "multi_worker".
        num_cpu_devices: split the CPU into this many logical devices first (for
            "mirrored" on machines without GPUs).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "auto":
        if cluster_worker_count() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1 or num_cpu_devices > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        if num_cpu_devices > 1:
            split_cpu(num_cpu_devices)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        split_cpu(num_cpu_devices)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    logging.info(
        "Strategy %s with %d replica(s).", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    return strategy


def is_chief(strategy):
    """True on the worker that writes checkpoints and summaries."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0) or task_type is None
