"""Issue 20 'Also': evaluate a v0.1 encoder and today's with TODAY's evaluation code.

Run with today's code (the /work/main venv, editable install of /work/main), from any
directory; called by experiments/v01_regression/run.sh. It uses the study's own evaluation harness
(`vader_tf.studies.small_study`: `StudyConfig.protocols()`, `Evaluations`,
`evaluate_encoders`), so every JSON records the study's protocol, its standalone
`experiments/eval_*.py` command, the serving-contract version and the training record,
exactly like results/seed0/*.json, and is skipped when it already exists (resumable).

Encoders (seed 0 for everything):
  v01_vader          v0.1's SavedModel, exported by v0.1's own export script (serving
                     contract 1): exactly v0.1's network (half-pixel decoder upsampling).
                     `embedding` = v0.1's output (contract 1's `features`).
  v01_vader_rundir   v0.1's run dir loaded by today's load_encoder: v0.1's weights inside
                     TODAY's decoder (grid-exact upsampling) -- a different function; a
                     diagnostic of what old run dirs give under today's loader.
  vader              today's seed-0 run (today's code, the study's budget), run dir.
  vader_savedmodel   the same run through its SavedModel (uint8 input like v01_vader), so
                     the SavedModel path's rounding is measured, not confounded.

  --extra=NAME=EXPORT@RUN,...  further SavedModels (e.g. v0.1 with one fix cherry-picked,
                     branches v01-grid / v01-wd / v01-enqueue), taps embedding and decoder,
                     all three evaluations.

Usage:
  python experiments/v01_regression/evaluate.py --out=DIR --v01_run=RUN --v01_export=EXPORT \
      --today_run=RUN --today_export=EXPORT [--extra=...] [--only=NAMES] [--smoke]
  python experiments/v01_regression/evaluate.py --out=DIR --table     # markdown table of the JSONs in DIR
"""

import argparse
import glob
import os
import keras

from vader_tf import storage
from vader_tf.eval.reporting import write_results
from vader_tf.studies import small_study
from vader_tf.training import precision

# (encoder name, taps, evaluations)
ALL = small_study.EVALUATIONS
PLAN = (
    ("v01_vader", ("embedding", "decoder", "P4"), ALL),
    ("vader", ("embedding", "decoder", "P4"), ALL),
    ("v01_vader_rundir", ("embedding",), ("correspondence", "linear_probe")),
    ("vader_savedmodel", ("embedding",), ("correspondence",)),
)


def table(out):
    """Markdown table: encoder, tap, CamVid mIoU, DAVIS J&F, PCK@8, mean error (px)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        result = storage.read_json(path)
        evaluation = result.get("evaluation")
        if evaluation not in ALL:
            continue
        stem = os.path.basename(path)[len(evaluation) + 1 : -len(".json")]
        name, tap = stem.rsplit("_", 1)
        row = rows.setdefault((name, tap), {})
        row.update(small_study.headline(evaluation, result["metrics"]))
    columns = ("mIoU", "J&F", "PCK@8", "err px")
    lines = ["| encoder | tap | " + " | ".join(columns) + " |", "|---" * (2 + len(columns)) + "|"]
    for (name, tap), row in sorted(rows.items()):
        cells = [f"{row[c]:.3f}" if c in row else "" for c in columns]
        lines.append(f"| {name} | {tap} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(model_dir, command):
    """A pretraining summary of a finished run dir (any code version): history from its
    TensorBoard scalars, config from its run_config.json."""
    history = small_study.read_history(model_dir)
    config = storage.read_json(os.path.join(model_dir, "run_config.json"))
    steps = [0] + [entry["step"] for entry in history]
    seconds = sum(
        (step - previous) * config["batch_size"] / entry["images_per_s"]
        for previous, step, entry in zip(steps, steps[1:], history)
        if entry.get("images_per_s")
    )
    return dict(
        metrics={"train_steps": history[-1]["step"] if history else 0,
                 "final_loss": history[-1]["loss"] if history else None,
                 "train_seconds": seconds, "history": history},
        config=config, argv=command,
        # As small_study.training_record: v0.1's step was symmetric (no option yet).
        training={"mixed_precision": precision.resolve(config["mixed_precision"]),
                  "symmetric_loss": config.get("symmetric_loss", True)},
    )


def write_summary(out, name, model_dir, record):
    path = small_study.pretrain_summary_path(out, name)
    if not os.path.exists(path):
        write_results(path, "pretraining", model_dir, record["metrics"],
                      config=record["config"], argv=record["argv"],
                      training=record["training"])


def write_pretrain_summaries(out, v01_run, v01_command, today_run):
    """pretrain_<name>.json for each encoder name, so every eval JSON carries the
    training record (precision, direction) the study's report checks."""
    v01 = summary(v01_run, v01_command)
    today_command = ["experiments/pretrain.py", f"--model_dir={today_run}",
                     "(see its run_config.json; the study's VADeR run, today's code)"]
    today = summary(today_run, today_command)
    for name, (model_dir, record) in {
        "v01_vader": (v01_run, v01), "v01_vader_rundir": (v01_run, v01),
        "vader": (today_run, today), "vader_savedmodel": (today_run, today),
    }.items():
        write_summary(out, name, model_dir, record)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--data_root", default="/work/shared/data")
    parser.add_argument("--v01_run")
    parser.add_argument("--v01_export")
    parser.add_argument("--today_run")
    parser.add_argument("--today_export")
    parser.add_argument("--extra", default="", help="NAME=EXPORT@RUN,... (see docstring).")
    parser.add_argument("--table", action="store_true", help="Only print the results table.")
    parser.add_argument("--v01_command", default="", help="v0.1 pretraining command, recorded.")
    parser.add_argument("--only", default="", help="Comma-separated encoder names (default all).")
    parser.add_argument("--smoke", action="store_true",
                        help="2 photos / 2 CamVid frames / 2 DAVIS frames: checks the plumbing.")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    extras = {}
    for item in filter(None, args.extra.split(",")):
        name, _, paths = item.partition("=")
        export, _, run = paths.partition("@")
        extras[name] = (export, run)
    for step in (small_study.completed_steps(run) for run in
                 (args.v01_run, args.today_run, *(r for _, r in extras.values()))):
        if step < 1200 and not args.smoke:
            raise SystemExit(f"A run is at step {step} < 1200: finish pretraining first.")
    os.makedirs(args.out, exist_ok=True)
    write_pretrain_summaries(args.out, args.v01_run, args.v01_command.split(), args.today_run)
    for name, (_, run) in extras.items():
        command = ["experiments/pretrain.py", f"--model_dir={run}",
                   "(v0.1's pretrain.py on the branch named in its result folder's notes)"]
        write_summary(args.out, name, run, summary(run, command))
    limits = dict(correspondence_images=2, probe_limit=2, davis_max_frames=2) if args.smoke else {}
    config = small_study.StudyConfig(data_root=args.data_root, run_dir="unused",
                                     results_dir=args.out, **limits)
    config.validate()
    evaluations = small_study.Evaluations(config)
    specs = {
        "v01_vader": args.v01_export, "v01_vader_rundir": args.v01_run,
        "vader": args.today_run, "vader_savedmodel": args.today_export,
        **{name: export for name, (export, _) in extras.items()},
    }
    only = set(filter(None, args.only.split(",")))
    plan = PLAN + tuple((name, ("embedding", "decoder"), ALL) for name in extras)
    for name, taps, which in plan:
        if only and name not in only:
            continue
        small_study.evaluate_encoders(
            evaluations, {name: specs[name]}, taps, seed=0, results_dir=args.out, which=which
        )
        keras.backend.clear_session()
    print(table(args.out))
    if args.smoke:
        print("smoke run OK; results in", args.out)


if __name__ == "__main__":
    main()
