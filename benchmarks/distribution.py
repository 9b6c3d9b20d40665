"""Distribution overhead: one VADeR train step on 2 logical CPU replicas
(`MirroredStrategy`) against 1 replica (the default strategy), at the same global batch.

The CPU must be split into logical devices before TensorFlow initialises, so the
measurement runs in a child process (`--worker`); both strategies are timed in that one
child, round by round. Both logical devices share the same cores and thread pools, so
this measures what the multi-replica code path costs (all-reduce, all-gather, per-replica
BN groups, scheduling), not a speed-up.

    python -m benchmarks.distribution [--quick]
"""

from benchmarks import common

NAME = "distribution"


def worker(settings):
    """Runs in the child: times both strategies and prints the JSON result."""
    import tensorflow as tf

    from vader_tf.training import distribution

    distribution.split_cpu(2)
    strategies = {
        "one_replica": tf.distribute.get_strategy(),
        "two_replicas": distribution.create_strategy("mirrored", num_cpu_devices=2),
    }
    callables = {}
    for name, strategy in strategies.items():
        with strategy.scope():
            config, model = common.training_model(**settings["model"])
        batch = common.pipeline_batch(config)
        dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        distributed_batch = next(iter(dataset))
        step = tf.function(lambda b, s=strategy, m=model: s.run(m.train_step, args=(b,)))
        callables[name] = lambda step=step, b=distributed_batch: step(b)
    times = common.time_interleaved(callables, warmup=1, repeats=settings["repeats"])
    common.print_json_line(
        {
            "config": common.config_summary(config),
            "replicas": {name: s.num_replicas_in_sync for name, s in strategies.items()},
            "one_replica_step_s": times["one_replica"]["median_s"],
            "two_replicas_step_s": times["two_replicas"]["median_s"],
            "two_over_one": times["two_replicas"]["median_s"] / times["one_replica"]["median_s"],
            "timing": times,
        }
    )


def run(quick):
    if quick:
        settings = {"model": dict(image_size=64, batch_size=4), "repeats": 2}
    else:
        settings = {"model": dict(image_size=96, batch_size=16), "repeats": 5}
    result = common.run_worker("benchmarks.distribution", settings)
    return settings, result


if __name__ == "__main__":
    common.main(NAME, run, __doc__, worker=worker)
