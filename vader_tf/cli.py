"""What the command-line scripts in `experiments/` and `export/` share.

- `run(main)`: `absl.app.run` for a script, printing errors in what the user gave
  (flags, paths, data specs) as one line instead of a traceback.
- `command(script, **flags)`: a shell command line that runs another script with the
  interpreter that is running now, for hints such as "Next: ...".

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
import sys

from absl import app

# Exceptions this project raises for bad flags, paths and data.
USER_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)

# The exit status for usage errors (as argparse and absl use).
USAGE_EXIT_CODE = 2

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SCRIPT_ROOT = os.path.dirname(_PACKAGE_DIR)


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
    """A pasteable command line running `script` with this interpreter and flags.

    Args:
        script: path relative to the repository, e.g. "export/export_saved_model.py".
            It is given relative to the working directory when it lies below it, else
            absolute (as is the interpreter), so the line works where it is printed.
        **flags: `--name=value` flags, in order.
    """
    path = os.path.join(_SCRIPT_ROOT, script)
    if not os.path.isfile(path):  # Not a source checkout: name the script as given.
        path = script
    elif not os.path.relpath(path).startswith(os.pardir):
        path = os.path.relpath(path)
    words = [sys.executable, path] + [f"--{name}={value}" for name, value in flags.items()]
    return shlex.join(words)
