"""The console commands: declared in setup.cfg, runnable from any directory, with a
`--help` of their own flags in groups, and hints that name them."""

import ast
import configparser
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys

from vader_tf import cli
from vader_tf.training.pretrain import PretrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def _console_scripts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    entries = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in entry.split("=")) for entry in entries)


def test_setup_cfg_installs_every_command_and_each_has_run_and_main():
    assert _console_scripts() == {name: f"{module}:run" for name, module in cli.COMMANDS.items()}
    for module in cli.COMMANDS.values():
        path = os.path.join(REPO, *module.split(".")) + ".py"
        with open(path) as f:
            body = ast.parse(f.read()).body
        functions = {node.name for node in body if isinstance(node, ast.FunctionDef)}
        assert {"main", "run"} <= functions, module


def test_the_script_paths_run_the_same_commands():
    """`python experiments/pretrain.py` and the others are shims of the command modules."""
    for module in cli.COMMANDS.values():
        name = module.rpartition(".")[2]
        exporters = (
            "export_saved_model", "export_tflite", "export_keras_hub_preset", "convert_torch_weights"
        )
        folder = "export" if name in exporters else "experiments"
        with open(os.path.join(REPO, folder, f"{name}.py")) as f:
            assert f"from {module} import main, run" in f.read(), name


def _run_entry_point(module, program, *args, cwd):
    """Runs `module.run()` as the console script `program` does, from `cwd`."""
    code = f"import sys; sys.argv[0] = {program!r}; import {module} as m; m.run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
        env=ENV, timeout=300,
    )


def test_pretrain_command_runs_from_any_directory(tmp_path):
    result = _run_entry_point(
        "vader_tf.scripts.pretrain", "vader-pretrain", "--dry_run", "--model_dir=elsewhere",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(result.stdout[result.stdout.index("{"):])
    assert config == {**dataclasses.asdict(PretrainConfig()), "model_dir": "elsewhere"}


def test_pretrain_help_lists_its_own_flags_in_groups(tmp_path):
    result = _run_entry_point(
        "vader_tf.scripts.pretrain", "vader-pretrain", "--help", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith("usage: vader-pretrain [--flag=value ...]\n")
    titles = re.findall(r"^(\w+):$", text, flags=re.MULTILINE)
    assert titles == ["data", "model", "method", "optimiser", "run"]
    sections = dict(zip(titles, re.split(r"^\w+:$", text, flags=re.MULTILINE)[1:]))
    listed = {
        title: re.findall(r"^  --(\w+):", body, flags=re.MULTILINE)
        for title, body in sections.items()
    }
    every = [name for names in listed.values() for name in names]
    fields = [field.name for field in dataclasses.fields(PretrainConfig)]
    assert sorted(every) == sorted(fields + ["dry_run"])  # Each once, none under "other".
    assert "model_dir" in listed["run"] and "backbone" in listed["model"]
    assert "data" in listed["data"] and "max_image_pixels" in listed["data"]
    for internal in ("--test_tmpdir", "--alsologtostderr", "--tpu", "--only_check_args"):
        assert internal not in text
    assert len(text.splitlines()) < 150


def test_a_missing_data_root_is_named_from_any_directory(tmp_path):
    result = _run_entry_point(
        "vader_tf.scripts.eval_linear_probe", "vader-eval-linear-probe",
        "--encoder=random:resnet18", "--data_root=/missing", "--output=probe.json", cwd=tmp_path,
    )
    assert result.returncode == cli.USAGE_EXIT_CODE
    assert result.stderr.strip().splitlines()[-1] == (
        "vader-eval-linear-probe: error: Data root /missing: no such directory."
    )
    assert not os.listdir(tmp_path)


def test_hints_name_the_command_and_a_model_of_the_run_s_own(monkeypatch):
    monkeypatch.setenv("PATH", "")  # Not installed: the module through this interpreter.
    export_dir = cli.export_dir_for("runs/my run")
    words = shlex.split(cli.command("vader-export", model_dir="runs/my run", export_dir=export_dir))
    assert words == [
        sys.executable, "-m", "vader_tf.scripts.export_saved_model", "--model_dir=runs/my run",
        "--export_dir=exports/my run",
    ]
    assert cli.export_dir_for("gs://bucket/runs/densecl_r50/") == "exports/densecl_r50"
    assert cli.export_dir_for("runs/vader_samples") != cli.export_dir_for("runs/moco_samples")


def test_readme_names_real_commands_and_gives_each_pretraining_run_its_own_model_dir():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    named = set(re.findall(r"\bvader-[a-z-]+[a-z]", text)) - {"vader-tf"}
    assert named and named <= set(cli.COMMANDS), named - set(cli.COMMANDS)
    runs = [
        line for line in re.findall(r"^vader-pretrain .*$", text, flags=re.MULTILINE)
        if "--data" in line or "--flagfile" in line
    ]
    model_dirs = [re.search(r"--model_dir=(\S+)", line) for line in runs]
    assert len(runs) >= 3 and all(model_dirs), runs  # A flagfile run without one collides.
    assert len({match.group(1) for match in model_dirs}) == len(runs)
