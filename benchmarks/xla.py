"""XLA on CPU: the single-device VADeR train step compiled with `jit_compile=True`
against the default TensorFlow graph (with oneDNN kernels), same model and batch, timed
round by round in one process. Also records the first-call (trace + compile) times.

    python -m benchmarks.xla [--quick]
"""

import time

import tensorflow as tf

from benchmarks import common

NAME = "xla"


def run(quick):
    if quick:
        fields, repeats = dict(image_size=64, batch_size=4), 2
    else:
        fields, repeats = dict(image_size=96, batch_size=16), 5
    config, model = common.training_model(**fields)
    batch = common.pipeline_batch(config)
    steps = {
        "default": tf.function(model.train_step),
        "jit_compile": tf.function(model.train_step, jit_compile=True),
    }
    first_call_s = {}
    for name, step in steps.items():
        start = time.perf_counter()
        common.block(step(batch))
        first_call_s[name] = time.perf_counter() - start
    times = common.time_interleaved(
        {name: (lambda s=step: s(batch)) for name, step in steps.items()},
        warmup=1,
        repeats=repeats,
    )
    results = {
        "default_step_s": times["default"]["median_s"],
        "jit_compile_step_s": times["jit_compile"]["median_s"],
        "jit_over_default": times["jit_compile"]["median_s"] / times["default"]["median_s"],
        "first_call_s": first_call_s,
        "timing": times,
    }
    return common.config_summary(config), results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
