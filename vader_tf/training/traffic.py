"""Bytes the train step all-gathers per replica and step, computed from shapes.

Two collectives gather data across replicas in `MomentumContrast.train_step`:

- shuffle BN (`BatchShuffle`, when `shuffle_bn` and several replicas): for each view the
  key network runs on, the images and the method's `key_reduction_inputs` are gathered
  to be permuted, and the keys reduced by `reduce_keys` on the replica that computed
  them are gathered to be put back in order;
- the enqueue: every term's keys and their mask (as float32) are gathered so that all
  replicas hold the same queues.

A gather's size is that of its result, which every replica receives: R times the
per-replica tensor. With one replica nothing moves (0 bytes). `gathered_whole=True`
counts the keys as the shuffle gathered them before `reduce_keys` existed: the key
network's whole outputs (VADeR's stride-4 maps), sampled only after the gather.
"""

import keras
import tensorflow as tf

from vader_tf.training.pretrain import build_model

IMAGE_DTYPE = tf.float32  # `vader_tf.data.pipeline` batches: float32 pixels, float32 points.


def batch_spec(batch_size, image_size, num_points):
    """`tf.TensorSpec`s of one replica's batch dict (`vader_tf.data.pipeline`)."""
    view = tf.TensorSpec([batch_size, image_size, image_size, 3], IMAGE_DTYPE)
    points = tf.TensorSpec([batch_size, num_points, 2], tf.float32)
    return {
        "view1": view,
        "view2": view,
        "points1": points,
        "points2": points,
        "valid": tf.TensorSpec([batch_size], tf.bool),
    }


def _nbytes(nest):
    return sum(
        x.shape.num_elements() * x.dtype.size for x in tf.nest.flatten(nest) if x is not None
    )


def _symbolic(fn, *specs):
    """`fn`'s outputs (symbolic tensors with static shapes) traced on `specs`."""
    return tf.function(fn).get_concrete_function(*specs).structured_outputs


def _output_spec(model, images_spec):
    """The key or query network's output specs (`tf.TensorSpec` nest) for `images_spec`."""
    outputs = model.compute_output_spec(keras.KerasTensor(images_spec.shape, "float32"))
    return tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), outputs)


def all_gather_bytes(model, batch_size, image_size, num_points, num_replicas, gathered_whole=False):
    """Bytes all-gathered per replica in one step of `model.train_step`.

    Args:
        model: a built `MomentumContrast` (its networks' output shapes and its hooks are
            read; nothing runs).
        batch_size: the per-replica batch.
        image_size, num_points: the batch's views and points (`batch_spec`).
        num_replicas: R.
        gathered_whole: count shuffle BN's keys gathered whole, before `reduce_keys`
            (the step before this existed), instead of reduced on their own replica.

    Returns:
        `{"shuffle_bn": {"images", "key_reduction_inputs", "keys", "total"},
        "enqueue": bytes, "total": bytes}`, every value in bytes per step and replica.
    """
    data = batch_spec(batch_size, image_size, num_points)
    views = (data["view1"], data["view2"])
    key_views = sorted({k for _, k in model.directions})
    query_views = {q for q, _ in model.directions}
    shuffle = dict(images=0, key_reduction_inputs=0, keys=0)
    key_outputs = [None, None]
    for view_index in key_views:
        outputs = _output_spec(model.key_model, views[view_index])
        inputs = _symbolic(lambda d, v=view_index: model.key_reduction_inputs(d, v), data)
        reduced = _symbolic(model.reduce_keys, outputs, inputs)
        key_outputs[view_index] = tf.nest.map_structure(
            lambda x: tf.TensorSpec(x.shape, x.dtype), reduced
        )
        shuffle["images"] += _nbytes(views[view_index])
        if gathered_whole:
            shuffle["keys"] += _nbytes(outputs)
        else:
            shuffle["key_reduction_inputs"] += _nbytes(inputs)
            shuffle["keys"] += _nbytes(reduced)
    query_outputs = [
        _output_spec(model.query_model, v) if i in query_views else None
        for i, v in enumerate(views)
    ]

    def enqueued(d, q, k):
        # `contrastive_rows` on symbolic outputs: only the enqueued shapes are read.
        terms = model.contrastive_rows(d, q, k)
        return [(t.keys_to_enqueue, tf.cast(t.enqueue_mask, tf.float32)) for t in terms]

    enqueue = _nbytes(_symbolic(enqueued, data, query_outputs, key_outputs))
    # One replica gathers nothing; shuffle BN moves data only when it is on.
    scale = num_replicas if num_replicas > 1 else 0
    shuffle = {k: v * scale if model.shuffle_bn else 0 for k, v in shuffle.items()}
    shuffle["total"] = sum(shuffle.values())
    enqueue *= scale
    return {"shuffle_bn": shuffle, "enqueue": enqueue, "total": shuffle["total"] + enqueue}


def config_all_gather_bytes(config, num_replicas, gathered_whole=False):
    """`all_gather_bytes` of the model a `PretrainConfig` trains, at `num_replicas`
    replicas sharing `config.batch_size` (builds the model; runs nothing)."""
    if config.batch_size % num_replicas:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the {num_replicas} replicas."
        )
    model = build_model(config)
    return all_gather_bytes(
        model,
        config.batch_size // num_replicas,
        config.image_size,
        config.num_points,
        num_replicas,
        gathered_whole,
    )


def describe_all_gather(config, num_replicas=None, reference_replicas=8):
    """One line for `experiments/pretrain.py --dry_run`: the expected bytes all-gathered
    per step and replica by `config`'s step.

    Args:
        config: a validated `PretrainConfig`.
        num_replicas: replicas the run would have (default: the GPUs visible here, or
            `config.num_cpu_devices`).
        reference_replicas: also shown when `num_replicas` is 1 (nothing is gathered on
            one replica), e.g. the 8 GPUs of the paper-scale config.
    """
    if num_replicas is None:
        num_replicas = max(len(tf.config.list_physical_devices("GPU")), config.num_cpu_devices, 1)
    counts = [num_replicas] if num_replicas > 1 else [num_replicas, reference_replicas]
    parts = []
    for replicas in counts:
        if config.batch_size % replicas:
            parts.append(f"{replicas} replicas: batch_size not divisible")
            continue
        gathered = config_all_gather_bytes(config, replicas)
        parts.append(
            f"{gathered['total'] / 1e6:.1f} MB at {replicas} replica(s) (shuffle BN "
            f"{gathered['shuffle_bn']['total'] / 1e6:.1f} MB, enqueue "
            f"{gathered['enqueue'] / 1e6:.1f} MB)"
        )
    return "Expected all-gather per step and replica: " + "; ".join(parts) + "."
