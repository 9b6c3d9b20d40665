"""bfloat16 against float32: the VADeR and MoCo train steps under `mixed_bfloat16` and
in float32, with the machine's peak measured in each precision, all timed round by round
in one process.

Each step's FLOPs are counted on its traced graph (`common.graph_flops`); its efficiency
is its FLOP rate over the peak of the precision it computes in (the faster of a large
matmul and a ResNet-50 3x3 convolution, `common.peak_kernels`, in float32 or bfloat16).
The traced `mixed_bfloat16` graphs are also audited for silent upcasts: every
convolution and matmul is listed by dtype (`common.flops_by_dtype`); float32 ones should
be only the loss' similarity matmuls, which are float32 by design.

    python -m benchmarks.precision [--quick]
"""

from benchmarks import common
from vader_tf.training.precision import cpu_bfloat16_flags

NAME = "precision"
# `PretrainConfig.mixed_precision` values, and the dtype their convolutions run in.
PRECISIONS = {"none": "float32", "mixed_bfloat16": "bfloat16"}
METHODS = ("vader", "moco")
TARGET = 0.6


def step_name(method, mixed_precision):
    return f"{method}/{PRECISIONS[mixed_precision]}"


def measure(fields, repeats, quick, warmup=1):
    steps, flops, audits, batch = {}, {}, {}, None
    for method in METHODS:
        for mixed_precision in PRECISIONS:
            name = step_name(method, mixed_precision)
            config, steps[name], batch, graph = common.traced_train_step(
                batch, method=method, mixed_precision=mixed_precision, **fields
            )
            flops[name] = common.graph_flops(graph)["from_shapes"]
            audits[name] = common.flops_by_dtype(graph)
    kernels = {dtype: common.peak_kernels(quick, dtype) for dtype in PRECISIONS.values()}
    callables = {**steps}
    for dtype_kernels in kernels.values():
        callables.update({k: fn for k, (fn, _) in dtype_kernels.items()})
    times = common.time_interleaved(callables, warmup, repeats)
    peaks = {dtype: common.peak_rate(kernels[dtype], times) for dtype in kernels}

    results = {}
    for method in METHODS:
        for mixed_precision, dtype in PRECISIONS.items():
            name = step_name(method, mixed_precision)
            step_s = times[name]["median_s"]
            achieved = flops[name] / step_s
            results[name] = {
                "step_s": step_s,
                "images_per_s": config.batch_size / step_s,
                "step_flops": flops[name],
                "achieved_flops_per_s": achieved,
                "fraction_of_peak": achieved / peaks[dtype][0],
                "fraction_of_float32_peak": achieved / peaks["float32"][0],
            }
    speedups = {
        method: {
            "median": times[step_name(method, "none")]["median_s"]
            / times[step_name(method, "mixed_bfloat16")]["median_s"],
            # From the fastest rounds: on a shared machine load only adds time.
            "min": times[step_name(method, "none")]["min_s"]
            / times[step_name(method, "mixed_bfloat16")]["min_s"],
        }
        for method in METHODS
    }
    return {
        "config": common.config_summary(config),
        "steps": results,
        "bfloat16_speedup": speedups,
        "peak_flops_per_s": {dtype: peak for dtype, (peak, _) in peaks.items()},
        "peak_kernel_flops_per_s": {dtype: rates for dtype, (_, rates) in peaks.items()},
        "bfloat16_over_float32_peak": peaks["bfloat16"][0] / peaks["float32"][0],
        "graph_audit": {
            name: audit for name, audit in audits.items() if name.endswith("/bfloat16")
        },
        "timing": times,
    }


def run(quick):
    cases = common.step_cases(quick)
    results = {name: measure(fields, repeats, quick) for name, fields, repeats in cases}
    config = {
        "cases": [name for name, _, _ in cases],
        "precisions": PRECISIONS,
        "target_fraction_of_peak": TARGET,
        "cpu_bfloat16_flags": cpu_bfloat16_flags(),
    }
    return config, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
