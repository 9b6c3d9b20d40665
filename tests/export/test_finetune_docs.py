"""The examples of docs/finetune.md, run as written (only paths, sizes and epochs are
replaced), so the documentation cannot drift from the code."""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.export.test_keras_hub_preset import run_without_vader_tf, tiny_encoder, write_run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOC = os.path.join(REPO, "docs", "finetune.md")
_BLOCK = re.compile(r"<!-- docs-test: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def doc_blocks(path=DOC):
    """`{name: code}` of the fenced blocks marked `<!-- docs-test: name -->` in `path`."""
    with open(path) as f:
        return {name: code for name, _, code in _BLOCK.findall(f.read())}


def substitute(code, replacements):
    """`code` with each `old` replaced by `new`; every `old` must occur (a doc edit that
    drops one fails here instead of running something else)."""
    for old, new in replacements.items():
        assert old in code, f"{old!r} is no longer in the docs example"
        code = code.replace(old, new)
    return code


_SMALL = {"SIZE = 256": "SIZE = 64", "EPOCHS = 10": "EPOCHS = 1"}


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    return write_run(str(tmp_path_factory.mktemp("docs_run")), tiny_encoder())


def test_docs_have_the_tested_blocks():
    assert sorted(doc_blocks()) == ["export-preset", "keras-hub-segmenter", "load-encoder-head"]


def test_run_dir_to_keras_hub_segmenter_as_documented(docs_run, tmp_path):
    blocks = doc_blocks()
    preset = str(tmp_path / "preset")
    command = substitute(
        blocks["export-preset"],
        {"python ": "", "runs/vader_r50": docs_run, "presets/vader_r50": preset},
    )
    result = subprocess.run(
        [sys.executable, *shlex.split(command)], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(preset, "config.json"))

    code = substitute(blocks["keras-hub-segmenter"], {**_SMALL, "presets/vader_r50": preset})
    code += "\nimport numpy\nnumpy.save('probabilities.npy', probabilities)\n"
    os.chdir(tmp_path)  # The example writes segmenter.keras into the working directory.
    try:
        run_without_vader_tf(code)
    finally:
        os.chdir(REPO)
    probabilities = np.load(tmp_path / "probabilities.npy")
    assert probabilities.shape == (4, 64, 64, 2)
    assert (tmp_path / "segmenter.keras").exists()


def test_custom_head_on_load_encoder_as_documented(docs_run, tmp_path, monkeypatch):
    code = substitute(doc_blocks()["load-encoder-head"], {**_SMALL, "runs/vader_r50": docs_run})
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, DOC, "exec"), namespace)  # pylint: disable=exec-used
    probabilities = np.asarray(namespace["probabilities"])
    assert probabilities.shape == (4, 16, 16, 2)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert (tmp_path / "head_on_encoder.keras").exists()
