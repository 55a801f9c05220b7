"""Fixtures of the command-line tests: each test runs in its own empty folder; ``cli`` runs
``logitkit`` in-process and checks user errors; ``data`` is a model's overconfident logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from logitkit import softmax
from logitkit.cli import main


def overconfident(n=400, k=4, seed=0, scale=3.0):
    """Logits ``scale`` times too confident for labels drawn from ``softmax(logits / scale)``."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.uniform(size=(n, 1)) > cdf).sum(axis=1), k - 1)
    return (scale * true).astype(np.float32), y.astype(np.int64)


class Cli:
    """``logitkit`` run in-process, with its output captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def run(self, *argv):
        """``(exit status, stdout, stderr)`` of ``logitkit ARGV``."""
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv):
        """Run a command that must succeed; its ``(stdout, stderr)``."""
        code, out, err = self.run(*argv)
        assert code == 0, (code, out, err)
        return out, err

    def error(self, *argv, match):
        """Run a command that must fail as a user error: exit 2, one line on stderr that
        contains ``match``, no traceback.  Returns the line."""
        code, out, err = self.run(*argv)
        assert code == 2, (code, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert match in lines[0], lines[0]
        assert lines[0].startswith("logitkit") and "Traceback" not in err + out
        return lines[0]

    @staticmethod
    def report(folder):
        with open(os.path.join(folder, "report.json"), encoding="utf-8") as fh:
            return json.load(fh)

    @staticmethod
    def temperature(report):
        """The fitted T of a report whose calibrator is temperature scaling."""
        assert report["calibrator"]["method"] == "temperature", report["calibrator"]["method"]
        return report["calibrator"]["fitted"]["temperature_"]


@pytest.fixture
def cli(capsys):
    return Cli(capsys)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data():
    """400 rows of 4-class logits three times too confident, and their labels."""
    return overconfident()


@pytest.fixture
def make_data():
    """:func:`overconfident`, for other sizes."""
    return overconfident

