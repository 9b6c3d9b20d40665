"""Runs every benchmark, each in its own process, and prints the headline figures.

    python benchmarks/run_all.py            # full suite, ~11-12 min on 2 shared cores (+ issue 13's)
    python benchmarks/run_all.py --quick    # smoke run, ~4 min (mostly tracing)
    python benchmarks/run_all.py --only dense_cost,serving
    python benchmarks/run_all.py --only precision,peer_densecl   # issue 13 (~40 min loaded)

Results: `benchmarks/results/<name>.json` (quick runs: `benchmarks/results/tmp-quick/`).
Exits non-zero if any benchmark failed.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = (
    "dense_cost",
    "efficiency",
    "input_pipeline",
    "loss_scaling",
    "distribution",
    "serving",
    "memory",
    "xla",
    "step_direction",
    "decoded_cache",
    "precision",
    "peer_densecl",
    "label_propagation",
    "image_summaries",
)
# Benchmarks that need an optional extra: skipped, with a note, when it is not installed.
NEEDS = {"peer_densecl": ("lightly", "pip install -e '.[peer]'")}


def headline(name, results):
    """A few `label: value` strings summarising one benchmark's results."""

    def per_case(key):
        return {case: r[key] for case, r in results.items() if isinstance(r, dict) and key in r}

    if name == "dense_cost":
        fractions = per_case("fraction_of_vader_step")
        return [
            f"vader/moco {per_case('vader_over_moco')}",
            f"loss fraction { {case: f['loss'] for case, f in fractions.items()} }",
        ]
    if name == "label_propagation":
        return [
            f"{grid}: tiles/full search speed-up "
            f"{ {k: v for k, v in r['speedup_over_full_search'].items() if k != 'full_search'} }"
            for grid, r in results.items()
            if isinstance(r, dict)
        ]
    if name == "efficiency":
        return [f"fraction of peak {per_case('fraction_of_peak')}"]
    if name == "input_pipeline":
        return [f"pipeline/train step {results['pipeline_over_train_step']}"]
    if name == "loss_scaling":
        return [f"time vs P*K R^2 {results['time_vs_rows_x_queue']['r_squared']}"]
    if name == "distribution":
        return [f"2 replicas / 1 replica {results.get('two_over_one', results)}"]
    if name == "serving":
        return [
            f"saved_model/keras eager {results['saved_model_over_keras_eager']}, "
            f"/compiled {results['saved_model_over_keras_compiled']}"
        ]
    if name == "memory":
        return [f"peak RSS MB {per_case('peak_rss_mb')}"]
    if name == "xla":
        return [f"jit/default {results['jit_over_default']}"]
    if name == "decoded_cache":
        return [
            f"cache on/off images/s {results['cache_on_over_off']}, end to end/bare step "
            f"{results['end_to_end_over_bare']} (cache off "
            f"{results['end_to_end_over_bare_cache_off']}); target met: {results['target']['met']}"
        ]
    if name == "step_direction":
        return [
            f"one-direction speed-up vader {results['vader_one_direction_speedup']}, "
            f"moco {results['moco_one_direction_speedup']}"
        ]
    if name == "image_summaries":
        return [
            f"pictures' share of wall time at the default cadence "
            f"{results['share_of_wall_time_at_default_cadence']} (budget {results['budget']})"
        ]
    cases = {case: r for case, r in results.items() if isinstance(r, dict) and "steps" in r}
    if name == "precision":
        return [f"bf16 speed-up {per_case('bfloat16_speedup')}"] + [
            f"{case} fraction of own peak "
            + ", ".join(f"{step} {s['fraction_of_peak']}" for step, s in r["steps"].items())
            for case, r in cases.items()
        ]
    if name == "peer_densecl":
        return [
            f"{case} images/s "
            + ", ".join(f"{step} {s['images_per_s']}" for step, s in r["steps"].items())
            + f"; target {r['target']}"
            for case, r in cases.items()
        ]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run.")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="Comma-separated names.")
    parser.add_argument("--results_dir", default=None, help="Where the JSON results go.")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"Unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}.")
    results_dir = args.results_dir or os.path.join(REPO, "benchmarks", "results")
    if args.quick and not args.results_dir:
        results_dir = os.path.join(results_dir, "tmp-quick")
    flags = (["--quick"] if args.quick else []) + ["--results_dir", results_dir]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    failed = []
    started = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        if name in NEEDS and importlib.util.find_spec(NEEDS[name][0]) is None:
            print(f"   skipped: needs {NEEDS[name][0]} ({NEEDS[name][1]})", flush=True)
            continue
        command = [sys.executable, "-m", f"benchmarks.{name}", *flags]
        if subprocess.run(command, cwd=REPO, env=env).returncode != 0:
            failed.append(name)
            continue
        with open(os.path.join(results_dir, f"{name}.json")) as f:
            for line in headline(name, json.load(f)["results"]):
                print(f"   {line}", flush=True)
    print(f"Done in {time.perf_counter() - started:.0f} s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
