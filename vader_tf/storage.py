"""File access through `tf.io.gfile`, so every path may live on any filesystem TensorFlow
knows: local paths, `gs://` buckets, `ram://` (in-memory, one process) and others.

What is guaranteed where:

- Local filesystem (a path without `scheme://`, or `file://`): `write_atomic` and
  `publish_directory` write a temporary name next to the target and rename it, so readers
  see either the old content or the complete new one, never a partial file or directory.
- Object stores such as GCS have no atomic rename: `tf.io.gfile.rename` of a file is a
  copy and a delete, and a directory's is one per object (never at once, so it is never
  used here). A single object is still never seen half-written (an upload becomes
  visible only once complete), so `write_atomic` keeps its guarantee per file. A directory is staged locally
  (`staging_directory`) and `publish_directory` copies it file by file, `saved_model.pb`
  last: while it runs, or if it is killed, the target may exist without its
  `saved_model.pb`, which `tf.saved_model.contains_saved_model` treats as not (yet) a
  SavedModel; a killed copy's target stays so (and its local staging folder stays).
  Not guaranteed there: a directory appearing at once, or any lock between writers.
  tests/test_object_store.py checks these guarantees, and a run killed inside a
  copy-and-delete rename resuming bit-identically, on `objstore://`, a test double of
  an object store (a TensorFlow filesystem plugin, tests/support/objstore_filesystem.c).
- `ram://` behaves like an object store here: its directory rename drops the
  directory's content, and its listings mix up siblings whose names share a prefix
  (`assets` lists `assets.extra`'s files), so directories are never walked there.

Temporary names carry the writer's process id (`*.tmp-<pid>*`); `process_is_running`
tells whether such a writer still runs on this machine, so leftovers of killed writers
can be removed. On storage shared by several machines only one of them (the chief) may
clean up.
"""

import io
import json
import os
import re
import tempfile

import tensorflow as tf

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path):
    """Whether `path` is on the local filesystem (no `scheme://`, or `file://`)."""
    return not _SCHEME.match(path) or path.startswith("file://")


def absolute(path):
    """`path` made absolute if local; other filesystems' paths are returned as they are."""
    return os.path.abspath(path) if not _SCHEME.match(path) else path


def temporary_name(path, suffix=""):
    """A sibling of `path` for an atomic write by this process: `<path>.tmp-<pid><suffix>`."""
    return f"{path}.tmp-{os.getpid()}{suffix}"


def process_is_running(pid):
    """Whether a process `pid` runs on this machine (a leftover of a dead one is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # It exists, under another user.
    return True


def makedirs(path):
    """Creates directory `path` and its parents if missing (a no-op for an empty path)."""
    if path:
        tf.io.gfile.makedirs(path)


def write_atomic(path, content):
    """Writes `content` (str or bytes) to `path` through a temporary name and a rename."""
    makedirs(os.path.dirname(path))
    tmp = temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def write_json_atomic(path, payload):
    """Writes `payload` as indented, key-sorted JSON to `path` (see `write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """The JSON document at `path`."""
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_bytes(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def isfile(path):
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def listdir(path):
    """The names in directory `path` (without the trailing `/` some filesystems add)."""
    return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]


def open_image(path):
    """The image file at `path` as a `PIL.Image` (read into memory first)."""
    from PIL import Image  # Imported here: only image readers need Pillow.

    return Image.open(io.BytesIO(read_bytes(path)))  # In memory: read through gfile.


def read_json_if_exists(path):
    """The JSON document at `path`, or None if there is no file there."""
    return read_json(path) if tf.io.gfile.exists(path) else None


def remove(path):
    """Deletes the file or directory tree `path`."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def copy_tree(source, target, last=None):
    """Copies the directory tree `source` to `target` file by file; `last` (a file name
    relative to `source`) is copied after every other file."""
    files = []
    for root, _, names in tf.io.gfile.walk(source):
        relative_root = root[len(source.rstrip("/")) :].strip("/")
        files += [os.path.join(relative_root, name) for name in names]
    files.sort(key=lambda name: (name == last, name))
    for name in files:
        makedirs(os.path.dirname(os.path.join(target, name)))
        tf.io.gfile.copy(os.path.join(source, name), os.path.join(target, name))


def staging_directory(target, name):
    """Where to write a directory before `publish_directory(staging, target)`: `name`
    next to `target` on the local filesystem (not created), a new local temporary
    directory otherwise."""
    if is_local(target):
        return os.path.join(os.path.dirname(target), name)
    # Local on purpose: other filesystems get a copy (see the module docstring).
    return tempfile.mkdtemp(prefix=f"vader{name}-")


def publish_directory(tmp, target, last="saved_model.pb"):
    """Moves the finished directory `tmp` (from `staging_directory`) to `target`, which
    must not exist.

    A rename on the local filesystem; elsewhere a copy with `last` (the file readers
    look for first) copied last and a deletion of `tmp` (see the module docstring for
    what readers may see meanwhile).
    """
    if is_local(target):
        tf.io.gfile.rename(tmp, target)
        return
    try:
        copy_tree(tmp, target, last=last)
    except Exception:
        if tf.io.gfile.exists(target):  # A failed copy leaves no partial target behind.
            tf.io.gfile.rmtree(target)
        raise
    tf.io.gfile.rmtree(tmp)


def _probe_reason(error):
    """The first line of an I/O error's message, for a one-line report."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    # TensorFlow's messages start with the path ("<probe>; Permission denied").
    return message.strip().splitlines()[0].rpartition("; ")[2]


def check_writable_dir(path, flag_name):
    """Checks, before any work, that directory `path` can be created or written into.

    A probe file is created and removed (on any `tf.io.gfile` filesystem: local,
    `gs://`, `ram://`...): in `path` if it exists, else in its nearest existing ancestor
    on the local filesystem (nothing is created: `path` itself is made later by its
    writer), or at `path` itself on object stores, where directories are only prefixes.

    Args:
        path: the output directory a flag names.
        flag_name: the flag's name, for the message (e.g. "model_dir").

    Raises:
        ValueError: one line naming `--flag_name=path` and the reason (a regular file in
            the way, permission denied, read-only or virtual filesystem...).
    """

    def refuse(reason):
        raise ValueError(f"--{flag_name}={path} cannot be written: {reason}.")

    if not path:
        refuse("the path is empty")
    probe_dir = path
    if is_local(path):
        probe_dir = os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)
        while not tf.io.gfile.exists(probe_dir):
            probe_dir = os.path.dirname(probe_dir)
    if tf.io.gfile.exists(probe_dir) and not tf.io.gfile.isdir(probe_dir):
        refuse(f"{probe_dir} is a file, not a directory")
    probe = os.path.join(probe_dir, f".write-probe-{os.uname().nodename}-{os.getpid()}")
    try:
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as error:
        refuse(f"no file can be created in {probe_dir} ({_probe_reason(error)})")


def check_writable_file(path, flag_name):
    """`check_writable_dir` for an output file `path`: its folder must be writable and
    `path` must not be a directory. Raises `ValueError` in one line."""
    if path and tf.io.gfile.isdir(path):
        raise ValueError(f"--{flag_name}={path} cannot be written: it is a directory.")
    folder = os.path.dirname(path) if path else path
    try:
        check_writable_dir(folder or ".", flag_name)
    except ValueError as error:
        raise ValueError(str(error).replace(f"={folder or '.'} ", f"={path} ", 1)) from None
