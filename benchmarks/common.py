"""What every benchmark shares: environment record, timing, FLOP counting, the machine's
peak, training models and batches, subprocesses and the JSON result files.

Timing rules (see README.md): each callable runs `warmup` times untimed (tracing, caches),
then `repeats` timed rounds; when several callables are compared they are interleaved
round by round, so a change of machine load hits all of them alike. Results are medians;
only ratios measured within one process run are meaningful on a shared machine.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
# Quick runs are smoke checks; they go where git ignores them.
QUICK_RESULTS_DIR = os.path.join(RESULTS_DIR, "tmp-quick")


# --- environment and results -----------------------------------------------------------


def environment():
    """What the figures depend on besides the code."""
    return {
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run.")
    parser.add_argument("--results_dir", default=None, help="Where the JSON result goes.")
    return parser.parse_args(argv)


def write_result(name, config, results, quick, results_dir=None):
    """Writes `<results_dir>/<name>.json` and returns its path."""
    results_dir = results_dir or (QUICK_RESULTS_DIR if quick else RESULTS_DIR)
    os.makedirs(results_dir, exist_ok=True)
    payload = {
        "benchmark": name,
        "quick": quick,
        "environment": environment(),
        "config": config,
        "results": results,
    }
    path = os.path.join(results_dir, f"{name}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Not JSON serialisable: {value!r}")


def main(name, run, doc, worker=None, argv=None):
    """Command-line entry of one benchmark: `run(quick) -> (config, results)`.

    `doc` is the benchmark's module docstring (its first line describes it); results are
    written rounded to 4 significant digits.

    A benchmark that measures in child processes passes `worker(settings)`, which the
    child (started by `run_worker`) runs instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    if worker is not None and argv[:1] == ["--worker"]:
        worker(json.loads(argv[1]))
        return
    args = parse_args(doc.splitlines()[0], argv)
    started = time.perf_counter()
    config, results = run(args.quick)
    results = {**rounded(results), "wall_time_s": round(time.perf_counter() - started, 1)}
    path = write_result(name, config, results, args.quick, args.results_dir)
    print(f"{name}: wrote {path} ({results['wall_time_s']} s)", flush=True)


def rounded(value, digits=4):
    """`value` with floats (also inside dicts and lists) cut to `digits` significant digits."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.{digits}g}")
    return value


# --- timing ------------------------------------------------------------------------------


def block(result):
    """Waits for every tensor in `result` (a nested structure) to be computed."""
    for value in tf.nest.flatten(result):
        if isinstance(value, (tf.Tensor, tf.Variable)):
            value.numpy()
    return result


def time_interleaved(callables, warmup=1, repeats=5):
    """Median wall times (s) of no-argument callables, timed round-robin.

    Returns:
        `{name: {"median_s", "min_s", "max_s"}}` plus `"warmup"` and `"repeats"` keys.
    """
    for _ in range(warmup):
        for fn in callables.values():
            block(fn())
    times = {name: [] for name in callables}
    for _ in range(repeats):
        for name, fn in callables.items():
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    stats = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for name, t in times.items()
    }
    return {**stats, "warmup": warmup, "repeats": repeats}


def peak_rss_mb():
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- FLOPs and the machine's peak ----------------------------------------------------------

_CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def _op_flops(op):
    """Multiply-add FLOPs (2 per MAC) of a convolution or matmul op with static shapes."""
    if op.type in _CONV_OPS:
        # Forward, input-gradient and filter-gradient convolutions all cost
        # 2 * |output of the forward conv| * kh * kw * c_in.
        forward_output = op.outputs[0] if op.type == "Conv2D" else op.inputs[2]
        kernel = op.outputs[0] if op.type == "Conv2DBackpropFilter" else op.inputs[1]
        kh, kw, c_in = kernel.shape[:3]
        return 2 * forward_output.shape.num_elements() * kh * kw * c_in
    if op.type in ("MatMul", "BatchMatMulV2"):
        a = op.inputs[0].shape
        adjoint = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
        inner = a[-2] if adjoint else a[-1]
        return 2 * op.outputs[0].shape.num_elements() * inner
    return 0


def graph_flops(graph):
    """FLOPs of a traced graph, counted two ways.

    Returns:
        `{"from_shapes": ..., "by_op_type": {...}, "tf_profiler": ...}`: our count of
        convolutions (forward and both gradients) and matmuls from their static shapes,
        per op type, and `tf.compat.v1.profiler`'s float_operation total (which also counts
        elementwise work such as bias additions) as the cross-check.
    """
    by_type = {}
    for op in graph.get_operations():
        flops = _op_flops(op)
        if flops:
            by_type[op.type] = by_type.get(op.type, 0) + flops
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph, options=options, cmd="op")
    return {
        "from_shapes": sum(by_type.values()),
        "by_op_type": by_type,
        "tf_profiler": profile.total_float_ops,
    }


def peak_kernels(quick=False, dtype="float32"):
    """Large kernels that run near this machine's peak in `dtype`, with their FLOPs.

    Returns:
        `{name: (callable, flops)}`: a square matmul and a ResNet-50 stage-2 3x3
        convolution over several images, in `dtype` (a float32 name has no suffix, others
        end in `_<dtype>`). Time them in the same `time_interleaved` call as the workload
        they are compared with, so both see the same machine load.
    """
    n = 1024 if quick else 4096
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    images, size, channels = (2, 28, 128) if quick else (8, 56, 128)
    x = tf.cast(tf.random.normal([images, size, size, channels]), dtype)
    kernel = tf.cast(tf.random.normal([3, 3, channels, channels]), dtype)
    suffix = "" if dtype == "float32" else f"_{dtype}"
    return {
        f"peak_matmul_{n}{suffix}": (tf.function(lambda: tf.matmul(a, b)), 2 * n**3),
        f"peak_conv3x3_{images}x{size}x{size}x{channels}{suffix}": (
            tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME")),
            2 * images * size * size * channels * 9 * channels,
        ),
    }


def peak_rate(kernels, times):
    """The machine's peak FLOP/s: the fastest of `peak_kernels` timed in `times`.

    Returns:
        `(peak, {kernel name: FLOP/s})`.
    """
    rates = {k: flops / times[k]["median_s"] for k, (_, flops) in kernels.items()}
    return max(rates.values()), rates


def flops_by_dtype(graph):
    """Convolution and matmul FLOPs of a traced graph per compute dtype, and the float32 ops.

    Under a mixed policy every convolution should run in the low precision; float32 ones
    are either intended (the loss' similarity matmuls) or a silent upcast that loses the
    speed-up.

    Returns:
        `{"flops": {dtype: FLOPs}, "ops": {"<op type>/<dtype>": count, and
        "Cast/<from>-><to>": count}, "float32_ops": [names of the float32 convolutions and
        matmuls]}`.
    """
    flops, ops, float32_ops = {}, {}, []
    for op in graph.get_operations():
        if op.type == "Cast":
            cast = f"Cast/{op.get_attr('SrcT').name}->{op.get_attr('DstT').name}"
            ops[cast] = ops.get(cast, 0) + 1
        op_flops = _op_flops(op)
        if not op_flops:
            continue
        dtype = op.get_attr("T").name
        flops[dtype] = flops.get(dtype, 0) + op_flops
        ops[f"{op.type}/{dtype}"] = ops.get(f"{op.type}/{dtype}", 0) + 1
        if dtype == "float32":
            float32_ops.append(op.name)
    return {"flops": flops, "ops": ops, "float32_ops": float32_ops}


# --- models and batches --------------------------------------------------------------------


def training_model(**config_fields):
    """A compiled VADeR/MoCo model of `PretrainConfig(**config_fields)`, optimizer built.

    Returns:
        `(config, model)`.
    """
    from vader_tf.training.pretrain import PretrainConfig, build_model

    config = PretrainConfig(**config_fields)
    config.validate()
    model = build_model(config)
    model.optimizer.build(model.query_model.trainable_variables)
    return config, model


def traced_train_step(batch=None, **config_fields):
    """The compiled train step of `PretrainConfig(**config_fields)`, traced on a real batch.

    Args:
        batch: the batch to trace and time it on (default: `pipeline_batch(config)`).

    Returns:
        `(config, step, batch, graph)`: `step()` runs one training step on `batch`;
        `graph` is the traced step (for `graph_flops` and `flops_by_dtype`).
    """
    config, model = training_model(**config_fields)
    batch = pipeline_batch(config) if batch is None else batch
    step = tf.function(model.train_step)
    graph = step.get_concrete_function(batch).graph
    return config, lambda: step(batch), batch, graph


def pipeline_batch(config, seed=0):
    """One real training batch of `config` (the embedded sample photos), as tensors."""
    from vader_tf.data import pipeline, sources
    from vader_tf.training.pretrain import view_config

    dataset = pipeline.two_view_dataset(
        sources.samples_source(),
        view_config(config),
        batch_size=config.batch_size,
        num_points=config.num_points,
        seed=seed,
        min_overlap=config.min_overlap,
    )
    return next(iter(dataset))


def step_cases(quick):
    """The train-step configurations the step benchmarks share.

    Full: the main job (ResNet-18 at 96, batch 16) and ResNet-50 at 224 with a batch two
    cores can do (4). Quick: a tiny ResNet-18 run.

    Returns:
        A list of `(name, config_fields, repeats)`.
    """
    if quick:
        return [("resnet18@64_batch4", dict(image_size=64, batch_size=4), 2)]
    return [
        ("resnet18@96_batch16", dict(backbone="resnet18", image_size=96, batch_size=16), 7),
        ("resnet50@224_batch4", dict(backbone="resnet50", image_size=224, batch_size=4), 8),
    ]


def config_summary(config, *names):
    """The named `PretrainConfig` fields (default: those that set a step's cost)."""
    names = names or (
        "backbone", "image_size", "batch_size", "num_points", "queue_size",
        "decoder_channels", "embedding_dim", "bn_groups",
    )
    return {name: getattr(config, name) for name in names}


# --- subprocesses --------------------------------------------------------------------------


def run_module(module, args=(), timeout=1800):
    """Runs `python -m <module> <args>` from the repository root; returns its JSON.

    The child prints its result as the last line of stdout. A failing child (for example
    killed when out of memory) gives `{"error": ...}` instead of raising, so one
    configuration that does not fit does not lose the others' figures.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        completed = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-3:]
        return {"error": f"exit code {completed.returncode}", "stderr_tail": tail}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_worker(module, settings, timeout=1800):
    """Runs `module`'s `worker(settings)` in a child process (see `main`); its JSON."""
    return run_module(module, ["--worker", json.dumps(settings)], timeout)


def print_json_line(payload):
    """The child side of `run_module`."""
    print(json.dumps(payload, default=_json_default), flush=True)
