"""Cost of going dense: the VADeR train step against the MoCo v2 step, and what the
VADeR step spends its time on.

Both models share backbone, batch and resolution and are timed in one process, round by
round. The VADeR step is split into separately compiled parts run on the same batch:

* backbone: key forward (both views) + query forward and backward, in BN groups;
* decoder_head: the same for the FPN decoder and projection head, fed the backbone's
  pyramid levels;
* loss: point sampling, pixel InfoNCE against the queue, its gradient with respect to the
  feature maps, and the enqueue;
* optimizer_ema: the SGD update and the momentum (EMA) update of the key network.

`unattributed` is what the full step costs beyond their sum (shuffle-BN gathers, metrics,
concatenations, and scheduling differences). `vader_over_moco_flops` is the ratio the
architectures alone predict: convolution and matmul FLOPs of the two traced steps.

    python -m benchmarks.dense_cost [--quick]
"""

import keras
import tensorflow as tf

from benchmarks import common
from vader_tf import losses
from vader_tf.models.backbone import PYRAMID_LEVELS
from vader_tf.training import momentum as momentum_lib
from vader_tf.training import queue as queue_lib

NAME = "dense_cost"
COMPONENTS = ("backbone", "decoder_head", "loss", "optimizer_ema")


def _split_parts(encoder):
    """`(backbone, decoder_head)` functional sub-models of a `DenseEncoder`."""
    levels = [encoder.pyramid_outputs[level] for level in PYRAMID_LEVELS]
    backbone = keras.Model(encoder.input, levels)
    decoder_head = keras.Model(levels, encoder.output)
    return backbone, decoder_head


def _forward_backward(query_part, key_part, views, num_groups):
    """Key forward and query forward + backward of one part of the network, as in a step.

    `views` holds one input per view, each a tensor or a list of tensors.
    """

    def bn_groups(view):
        parts = zip(*[tf.split(x, num_groups) for x in tf.nest.flatten(view)])
        return [tf.nest.pack_sequence_as(view, list(group)) for group in parts]

    chunks = [bn_groups(view) for view in views]
    for view_chunks in chunks:
        for chunk in view_chunks:
            key_part(chunk, training=True)
    with tf.GradientTape() as tape:
        total = 0.0
        for view_chunks in chunks:
            for chunk in view_chunks:
                outputs = tf.nest.flatten(query_part(chunk, training=True))
                total += tf.add_n([tf.reduce_sum(output) for output in outputs])
    return tape.gradient(total, query_part.trainable_variables)


def vader_components(model, batch):
    """Compiled no-argument callables, one per part of the VADeR step (see module doc)."""
    views = [batch["view1"], batch["view2"]]
    groups = model.bn_groups
    query_backbone, query_decoder = _split_parts(model.query_model)
    key_backbone, key_decoder = _split_parts(model.key_model)
    levels = [query_backbone(v, training=False) for v in views]
    query_maps = [model.query_model(v, training=True) for v in views]
    key_maps = [model.key_model(v, training=True) for v in views]
    variables = model.query_model.trainable_variables
    gradients = [tf.zeros_like(v) for v in variables]

    @tf.function
    def backbone():
        return _forward_backward(query_backbone, key_backbone, views, groups)

    @tf.function
    def decoder_head():
        return _forward_backward(query_decoder, key_decoder, levels, groups)

    @tf.function
    def loss():
        with tf.GradientTape() as tape:
            tape.watch(query_maps)
            queries, positives, weights, keys, keys_mask = model.contrastive_rows(
                batch, query_maps, key_maps
            )
            rows = losses.info_nce(queries, positives, model.queue, model.temperature)
            total = tf.reduce_sum(weights * rows["loss"])
            mean = total / tf.maximum(tf.reduce_sum(weights), 1.0)
        map_gradients = tape.gradient(mean, query_maps)
        queue_lib.enqueue(model.queue, model.queue_pointer, keys, keys_mask)
        return map_gradients

    # The weights the EMA carries over: the query's trainable ones (as in the step).
    ema_indices = [i for i, w in enumerate(model.query_model.weights) if w.trainable]

    @tf.function
    def optimizer_ema():
        model.optimizer.apply(gradients, variables)
        momentum_lib.ema_update(
            [model.key_model.weights[i] for i in ema_indices],
            [model.query_model.weights[i] for i in ema_indices],
            model.momentum,
        )
        return model.optimizer.iterations

    return {
        "backbone": backbone,
        "decoder_head": decoder_head,
        "loss": loss,
        "optimizer_ema": optimizer_ema,
    }


def compare(fields, repeats, warmup=1):
    """Times the VADeR and MoCo steps and the VADeR parts for one configuration."""
    config, vader = common.training_model(method="vader", **fields)
    _, moco = common.training_model(method="moco", **fields)
    batch = common.pipeline_batch(config)
    vader_step = tf.function(vader.train_step)
    moco_step = tf.function(moco.train_step)
    callables = {
        "vader_step": lambda: vader_step(batch),
        "moco_step": lambda: moco_step(batch),
        **vader_components(vader, batch),
    }
    times = common.time_interleaved(callables, warmup=warmup, repeats=repeats)
    step = times["vader_step"]["median_s"]
    parts = {name: times[name]["median_s"] for name in COMPONENTS}
    fractions = {name: value / step for name, value in parts.items()}
    fractions["unattributed"] = 1.0 - sum(fractions.values())
    # What the architectures alone predict for the time ratio: convolution and matmul FLOPs.
    flops = {
        name: common.graph_flops(fn.get_concrete_function(batch).graph)["from_shapes"]
        for name, fn in (("vader", vader_step), ("moco", moco_step))
    }
    return {
        "config": common.config_summary(config),
        "vader_step_s": step,
        "moco_step_s": times["moco_step"]["median_s"],
        "vader_over_moco": step / times["moco_step"]["median_s"],
        # The same ratio from the fastest rounds: on a shared machine load only adds time.
        "vader_over_moco_min": times["vader_step"]["min_s"] / times["moco_step"]["min_s"],
        "step_flops": flops,
        "vader_over_moco_flops": flops["vader"] / flops["moco"],
        "component_s": parts,
        "fraction_of_vader_step": fractions,
        "timing": {name: times[name] for name in callables},
        "warmup": warmup,
        "repeats": repeats,
    }


def run(quick):
    cases = common.step_cases(quick)
    results = {name: compare(fields, repeats) for name, fields, repeats in cases}
    targets = {"loss_fraction_max": 0.05, "vader_over_moco_max_resnet50_224": 1.25}
    return {"cases": [name for name, _, _ in cases], "targets": targets}, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
