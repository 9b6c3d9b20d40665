"""Compute efficiency: FLOPs of one VADeR train step per second, as a fraction of this
machine's measured fp32 peak (a large matmul and a large 3x3 convolution, timed round by
round with the step in the same process, so both see the same machine load).

FLOPs are counted on the traced step graph from the static shapes of its convolutions
(forward, input- and filter-gradient) and matmuls, cross-checked against
`tf.compat.v1.profiler`'s float_operation count and against the rule of thumb "forward
FLOPs of one view x (2 key + 2 query forward + 2 x 2 backward) + loss".

    python -m benchmarks.efficiency [--quick]
"""

import tensorflow as tf

from benchmarks import common

NAME = "efficiency"
TARGET = 0.6


def measure(fields, repeats, quick, warmup=1):
    config, model = common.training_model(**fields)
    batch = common.pipeline_batch(config)
    step = tf.function(model.train_step)
    flops = common.graph_flops(step.get_concrete_function(batch).graph)
    encoder = tf.function(lambda images: model.query_model(images, training=True))
    view_flops = common.graph_flops(encoder.get_concrete_function(batch["view1"]).graph)
    loss_flops = flops["by_op_type"].get("MatMul", 0)
    kernels = common.peak_kernels(quick)
    callables = {"step": lambda: step(batch), **{k: fn for k, (fn, _) in kernels.items()}}
    times = common.time_interleaved(callables, warmup, repeats)
    peak, rates = common.peak_rate(kernels, times)
    achieved = flops["from_shapes"] / times["step"]["median_s"]
    return {
        "config": common.config_summary(config),
        "step_flops": flops,
        "rule_of_thumb_flops": 8 * view_flops["from_shapes"] + loss_flops,
        "one_view_forward_flops": view_flops["from_shapes"],
        "step_s": times["step"]["median_s"],
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": rates,
        "fraction_of_peak": achieved / peak,
        "timing": times,
    }


def run(quick):
    cases = common.step_cases(quick)
    results = {name: measure(fields, repeats, quick) for name, fields, repeats in cases}
    return {"cases": [name for name, _, _ in cases], "target_fraction_of_peak": TARGET}, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
