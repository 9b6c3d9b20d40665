"""Peak resident memory of VADeR training steps for the documented configurations.

Each configuration runs in its own child process (`--worker`), which builds the model,
takes one real batch, runs two train steps and reports `ru_maxrss` (the process's peak
RSS: weights, optimizer slots, the queue, the traced graph and the step's activations).
A configuration that does not fit (the child is killed) is reported as an error.

    python -m benchmarks.memory [--quick]
"""

from benchmarks import common

NAME = "memory"


def worker(fields):
    """Runs in the child: one configuration's peak RSS, printed as JSON."""
    import tensorflow as tf

    config, model = common.training_model(**fields)
    batch = common.pipeline_batch(config)
    after_build = common.peak_rss_mb()
    step = tf.function(model.train_step)
    for _ in range(2):
        common.block(step(batch))
    common.print_json_line(
        {
            "config": common.config_summary(config),
            "peak_rss_after_build_mb": after_build,
            "peak_rss_mb": common.peak_rss_mb(),
        }
    )


def run(quick):
    if quick:
        cases = {"resnet18@64_batch4": dict(image_size=64, batch_size=4)}
    else:
        cases = {
            # The main job (PretrainConfig defaults).
            "resnet18@96_batch16": dict(),
            # The ImageNet configuration's per-replica batch (32 on each of 8 GPUs).
            "resnet50@224_batch32": dict(
                backbone="resnet50", image_size=224, batch_size=32, queue_size=65536
            ),
        }
    results = {
        name: common.run_worker("benchmarks.memory", fields)
        for name, fields in cases.items()
    }
    return {"cases": cases}, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__, worker=worker)
