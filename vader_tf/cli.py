"""What the commands share (`vader_tf.scripts`, run as `vader-*` or `experiments/*.py`).

- `COMMANDS`: the console commands `pip install` makes, and the module of each (setup.cfg's
  `console_scripts` lists the same).
- `run(main, flag_groups)`: `absl.app.run` for a command, printing errors in what the user
  gave (flags, paths, data specs) as one line instead of a traceback, and a `--help` of
  the command's own flags, in groups (absl's `--helpfull` lists absl's too).
- `check_outputs(config, ...)`: the output paths among a config's fields are writable.
- `command(name, **flags)`: a shell command line that runs another command, for hints
  such as "Next: ...".

Which errors are the user's: the exception types in `USER_ERROR_TYPES`, raised by this
project's own code (a `raise` in `vader_tf`, in the running script or in a module beside
it, such as `vader_tf/studies/small_study.py` for `reproduce_small.py`), which validates
its inputs and says what is wrong with them. The same types raised inside TensorFlow,
Keras or Python itself, and every other exception, are unexpected: they keep their
traceback.
"""

import functools
import os
import shlex
import shutil
import sys
import textwrap

from absl import app, flags

# Console command -> module with its `run()` (setup.cfg's console_scripts must agree).
COMMANDS = {
    "vader-pretrain": "vader_tf.scripts.pretrain",
    "vader-export": "vader_tf.scripts.export_saved_model",
    "vader-export-tflite": "vader_tf.scripts.export_tflite",
    "vader-export-keras-hub-preset": "vader_tf.scripts.export_keras_hub_preset",
    "vader-convert-torch-weights": "vader_tf.scripts.convert_torch_weights",
    "vader-eval-linear-probe": "vader_tf.scripts.eval_linear_probe",
    "vader-eval-davis": "vader_tf.scripts.eval_davis",
    "vader-eval-correspondence": "vader_tf.scripts.eval_correspondence",
    "vader-eval-depth": "vader_tf.scripts.eval_depth",
    "vader-finetune-segmentation": "vader_tf.scripts.finetune_segmentation",
    "vader-visualize-features": "vader_tf.scripts.visualize_features",
}

# Exceptions this project raises for bad flags, paths and data.
USER_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)

# The exit status for usage errors (as argparse and absl use).
USAGE_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_here(error, script_path):
    """Whether the innermost frame of `error`'s traceback is this project's code: the
    package, the script or a module in the script's folder."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = os.path.abspath(traceback.tb_frame.f_code.co_filename)
    return filename.startswith(_PACKAGE_DIR + os.sep) or (
        os.path.dirname(filename) == os.path.dirname(script_path)
    )


def report_user_errors(main, script_path=None):
    """Wraps an absl `main(argv)`: user errors exit with one line and status 2, Ctrl-C
    with one line and status 130."""
    script_path = os.path.abspath(script_path or sys.argv[0])

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            # Ctrl-C outside the training loop (which checkpoints and exits 130 itself,
            # `vader_tf.training.preemption`): nothing to save; one line, 128 + SIGINT.
            print(f"{os.path.basename(script_path)}: interrupted.", file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except USER_ERROR_TYPES as error:
            if not _raised_here(error, script_path):
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"{os.path.basename(script_path)}: error: {message}", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)

    return wrapped


_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def _own_flags(flag_values):
    """The flags the running command defined: those of `vader_tf` modules and of the
    script (`__main__`), not absl's."""
    own = {}
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module.startswith("vader_tf") or module == "__main__" or module.endswith(".py"):
            own.update({flag.name: flag for flag in module_flags})
    return own


def _describe(flag):
    default = flag.default
    if default is None:
        default = "none"
    elif isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, str):
        default = repr(default)
    elif isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f"--{flag.name}: {' '.join(flag.help.split())} (default: {default})"


def help_text(doc, flag_groups=None, flag_values=flags.FLAGS, program=None):
    """The `--help` page: `doc`, then the command's own flags under `flag_groups`
    (`{title: [flag names]}`; flags in no group come last, under "other")."""
    program = program or os.path.basename(sys.argv[0])
    own = _own_flags(flag_values)
    groups = {
        title: [name for name in names if name in own]
        for title, names in (flag_groups or {}).items()
    }
    grouped = {name for names in groups.values() for name in names}
    rest = sorted(set(own) - grouped)
    if rest:
        groups["other" if flag_groups else "flags"] = rest
    lines = [f"usage: {program} [--flag=value ...]", ""]
    lines += [(doc or "").strip(), ""]
    for title, names in groups.items():
        lines.append(f"{title}:")
        for name in names:
            lines += textwrap.wrap(
                _describe(own[name]), width=88, initial_indent="  ", subsequent_indent="      "
            )
        lines.append("")
    lines.append("--flagfile=FILE reads flags from a file (one --flag=value a line);")
    lines.append("--helpfull lists absl's own flags too.")
    return "\n".join(lines)


def run(main, flag_groups=None):
    """`absl.app.run(main)`, with errors in the user's input reported as one line and
    `--help` (`-h`) printing `help_text` of `main`'s module docstring and `flag_groups`."""
    doc = sys.modules[main.__module__].__doc__

    def parse(argv):
        if any(arg in _HELP_FLAGS for arg in argv[1:]):
            print(help_text(doc, flag_groups))
            sys.exit(0)
        return app.parse_flags_with_usage(argv)

    app.run(report_user_errors(main), flags_parser=parse)


def check_outputs(config, directories=(), files=()):
    """Checks that the output paths among `config`'s fields can be written, before any
    work (see `storage.check_writable_dir`); raises `ValueError` in one line naming the
    first that cannot."""
    from vader_tf import storage  # Imported here: TensorFlow loads with it.

    for name in directories:
        storage.check_writable_dir(getattr(config, name), name)
    for name in files:
        storage.check_writable_file(getattr(config, name), name)


def export_dir_for(model_dir):
    """The export directory a hint proposes for run `model_dir`: `exports/<run name>`, so
    that each run becomes its own model (with versions 1, 2, ... of its own), never a
    new version of another run's model."""
    name = os.path.basename(model_dir.rstrip("/")) or "vader"
    return os.path.join("exports", name)


def command(name, **flag_values):
    """A pasteable command line running command `name` (a key of `COMMANDS`) with flags.

    The bare name when the `name` found on PATH is the one installed beside this
    interpreter; else `<this interpreter> -m <module>`, which works from any directory
    wherever this package is importable.

    Args:
        name: e.g. "vader-export".
        **flag_values: `--name=value` flags, in order.
    """
    installed = os.path.join(os.path.dirname(sys.executable), name)
    on_path = shutil.which(name)
    if on_path and os.path.exists(installed) and os.path.samefile(on_path, installed):
        words = [name]
    else:
        words = [sys.executable, "-m", COMMANDS[name]]
    return shlex.join(words + [f"--{key}={value}" for key, value in flag_values.items()])
