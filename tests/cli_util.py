"""Helpers shared by the command-line tests: run ``main`` in-process, check a user error, read a
report, and make the predictions of a model that is too confident."""

from __future__ import annotations

import json
import os

import numpy as np

from logitkit import softmax
from logitkit.cli import main


def overconfident(n=400, k=4, seed=0, scale=3.0):
    """Logits ``scale`` times too confident for labels drawn from ``softmax(logits / scale)``."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.uniform(size=(n, 1)) > cdf).sum(axis=1), k - 1)
    return (scale * true).astype(np.float32), y.astype(np.int64)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv, match):
    """Run a command that must fail as a user error: exit 2, one line on stderr, no traceback."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert lines[0].startswith("logitkit"), lines[0]
    return lines[0]


def report(folder):
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as fh:
        return json.load(fh)
