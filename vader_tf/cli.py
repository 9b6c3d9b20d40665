"""What the command-line scripts in `experiments/` and `export/` share.

- `run(main)`: `absl.app.run` for a script, printing errors in what the user gave
  (flags, paths, data specs) as one line instead of a traceback.
- `command(script, **flags)`: a shell command line that runs another script with the
  interpreter that is running now, for hints such as "Next: ...".

Which errors are the user's: the exception types in `USER_ERROR_TYPES`, raised by this
project's own code (a `raise` in `vader_tf` or in the running script), which validates
its inputs and says what is wrong with them. The same types raised inside TensorFlow,
Keras or Python itself, and every other exception, are unexpected: they keep their
traceback.
"""

import functools
import os
import shlex
import sys

from absl import app

# Exceptions this project raises for bad flags, paths and data.
USER_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)

# The exit status for usage errors (as argparse and absl use).
USAGE_EXIT_CODE = 2

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SCRIPT_ROOT = os.path.dirname(_PACKAGE_DIR)


def _raised_here(error, script_path):
    """Whether the innermost frame of `error`'s traceback is this project's code."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = os.path.abspath(traceback.tb_frame.f_code.co_filename)
    return filename.startswith(_PACKAGE_DIR + os.sep) or filename == script_path


def report_user_errors(main, script_path=None):
    """Wraps an absl `main(argv)`: user errors exit with one line and status 2."""
    script_path = os.path.abspath(script_path or sys.argv[0])

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERROR_TYPES as error:
            if not _raised_here(error, script_path):
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"{os.path.basename(script_path)}: error: {message}", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)

    return wrapped


def run(main):
    """`absl.app.run(main)`, with errors in the user's input reported as one line."""
    app.run(report_user_errors(main))


def command(script, **flags):
    """A pasteable command line running `script` (relative to the repository, e.g.
    "export/export_saved_model.py") with this interpreter and `--name=value` flags."""
    script_path = os.path.join(_SCRIPT_ROOT, script)
    if os.path.isfile(script_path):
        script_path = os.path.relpath(script_path) if _is_below_cwd(script_path) else script_path
    else:
        script_path = script
    words = [sys.executable, script_path] + [f"--{name}={value}" for name, value in flags.items()]
    return shlex.join(words)


def _is_below_cwd(path):
    return not os.path.relpath(path).startswith(os.pardir)
