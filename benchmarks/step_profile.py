"""Where a train step's time goes, op by op: the VADeR step in float32 and under
`mixed_bfloat16`, traced with TensorFlow's profiler and its op statistics grouped into
convolutions, batch norm, weight casts, loss and the rest.

Each step is run untimed (tracing, warm-up), then `repeats` times under
`tf.profiler.experimental`; the trace's per-op self times (TensorFlow's
"framework_op_stats" tool, read through its Python binding
`_pywrap_profiler_plugin.xspace_to_tools_data`, a private module: no TensorBoard plugin
is needed) are summed per category from the op's type and name. Times are thread-busy
time on all cores (idle excluded), per step: on 2 cores they add up to about twice the
step's wall time. Shares are what to read on a shared machine.

    python -m benchmarks.step_profile [--quick]
"""

import collections
import glob
import json
import re
import tempfile

import tensorflow as tf

from benchmarks import common

NAME = "step_profile"
PRECISIONS = ("none", "mixed_bfloat16")
_BATCH_NORM = re.compile(r"_bn(_\d+)?/")


def category(op_type, name):
    """The category of one op of the step, from its type and (scoped) name."""
    if op_type == "Cast":
        if _BATCH_NORM.search(name):
            return "batch norm casts"
        # Casts of weights to the compute dtype, and of their gradients back.
        return "weight casts" if "encoder" in name else "other casts"
    if _BATCH_NORM.search(name):
        return "batch norm"
    if "Conv2D" in op_type or "MatMul" in op_type:
        return "convolutions" if "encoder" in name else "loss matmuls"
    if "torch_sgd" in name or "Assign" in op_type or "ReadVariable" in op_type:
        return "optimizer, EMA, variables"
    if "encoder" in name:
        if "upsample" in name:
            return "decoder resize"
        return "other encoder ops (ReLU, additions, normalisation, pooling)"
    return "loss, sampling, queue, gradient sums"


def op_stats(step, repeats):
    """`[(op type, name, self time us)]` of `repeats` profiled runs of `step`."""
    logdir = tempfile.mkdtemp(prefix="step_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(repeats):
        common.block(step())
    tf.profiler.experimental.stop()
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"The profiler could not read {path}.")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    rows = [dict(zip(columns, [c and c.get("v") for c in row["c"]])) for row in table["rows"]]
    return [
        (r["type"], r["operation"], r["total_self_time"]) for r in rows if r["type"] != "IDLE"
    ]


def breakdown(stats, repeats):
    per_category = collections.Counter()
    for op_type, name, self_us in stats:
        per_category[category(op_type, name)] += self_us
    total = sum(per_category.values())
    return {
        "busy_ms_per_step": total / repeats / 1e3,
        "categories": {
            name: {"ms_per_step": us / repeats / 1e3, "share": us / total}
            for name, us in per_category.most_common()
        },
    }


def run(quick):
    (case, fields, _), = common.step_cases(quick)[:1]
    repeats = 1 if quick else 3
    results, batch = {}, None
    for mixed_precision in PRECISIONS:
        _, step, batch, _ = common.traced_train_step(
            batch, mixed_precision=mixed_precision, **fields
        )
        common.block(step())
        results[mixed_precision] = breakdown(op_stats(step, repeats), repeats)
    return {"case": case, "fields": fields, "repeats": repeats}, results


if __name__ == "__main__":
    common.main(NAME, run, __doc__)
