"""`objstore://`: a filesystem with object-store semantics for tests (see
`objstore_filesystem.c` for what it does and does not do, and tests/test_object_store.py
for why a TensorFlow filesystem plugin).

    python -m tests.support.objstore PLUGIN ROOT SCRIPT [ARGS...]

runs the absl script SCRIPT with ARGS after registering the plugin PLUGIN (built by
`build`) over the store in the local folder ROOT, so a test can run the project's scripts
against it in a subprocess.
"""

import os
import runpy
import subprocess
import sys

import tensorflow as tf

SCHEME = "objstore"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "objstore_filesystem.c")
ROOT_VARIABLE = "VADER_OBJSTORE_ROOT"


def build(directory):
    """Compiles the plugin into `directory` with gcc; returns the shared library's path."""
    output = os.path.join(directory, "libobjstore_filesystem.so")
    library_dir = tf.sysconfig.get_lib()
    subprocess.run(
        [
            "gcc", "-shared", "-fPIC", "-O1", "-std=gnu11", "-Wall", "-Werror",
            "-Wno-unused-parameter", "-Dconstexpr=static const",
            f"-I{tf.sysconfig.get_include()}", SOURCE, "-o", output,
            f"-L{library_dir}", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{library_dir}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return output


def register(plugin, root):
    """Makes `objstore://` paths name objects stored in the local folder `root`."""
    os.makedirs(root, exist_ok=True)
    os.environ[ROOT_VARIABLE] = root
    tf.experimental.register_filesystem_plugin(plugin)


def command(plugin, root, script, *args):
    """The command line running `script` with `args` on the store (see the module doc)."""
    return [sys.executable, "-m", "tests.support.objstore", plugin, root, script, *args]


if __name__ == "__main__":
    plugin, root, script = sys.argv[1:4]
    register(plugin, root)
    sys.argv = [script, *sys.argv[4:]]
    runpy.run_path(script, run_name="__main__")
