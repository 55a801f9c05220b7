"""Every path error of ``calibrate`` and ``apply`` (missing, unreadable, unwritable, a path
under a file, a folder where a file is expected, an output that exists) exits 2 with one line,
before any file is read or anything is fitted."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

NOBODY = 65534


@pytest.fixture
def no_work(monkeypatch):
    """Reading any predictions fails the test: path errors must come before the work."""
    from logitkit.cli import _apply, _calibrate

    def forbidden(*args, **kwargs):
        raise AssertionError("a file was read before every path was checked")

    monkeypatch.setattr(_calibrate, "read_inputs", forbidden)
    monkeypatch.setattr(_apply, "read_inputs", forbidden)
    monkeypatch.setattr("logitkit.cli._demo.make_demo", forbidden)


@pytest.fixture
def files(make_data):
    z, y = make_data()
    np.savez("preds.npz", logits=z, labels=y)
    np.save("logits.npy", z)
    np.save("labels.npy", y)
    pathlib.Path("afile").write_text("x")
    pathlib.Path("adir").mkdir()
    pathlib.Path("existing").mkdir()
    pathlib.Path("existing.npy").write_bytes(b"x")
    pathlib.Path("adir.npy").mkdir()
    pathlib.Path("labels.txt").write_text("0\n1\n")


def test_calibrate_path_errors_exit_2_before_any_work(cli, files, no_work):
    cases = [
        (["missing.npz"], "missing.npz: no such file"),
        (["afile/preds.npz"], "afile/preds.npz: no such file (afile is a file, not a folder)"),
        (["preds.npz", "--labels", "missing.npy"], "--labels missing.npy: no such file"),
        (["logits.npy", "--labels", "adir"], "--labels adir: unsupported file type '(none)'"),
        (["logits.npy", "--labels", "adir.npy"], "--labels adir.npy: is a folder, expected a"),
        (["logits.npy", "--labels", "labels.txt"], "--labels labels.txt: unsupported file type"),
        (["preds.npz", "--test", "missing.npz"], "missing.npz: no such file"),
        (["preds.npz", "--test", "logits.npy", "--test-labels", "adir.npy"],
         "--test-labels adir.npy: is a folder, expected a file"),
        (["preds.npz", "--test-labels", "labels.npy"], "--test-labels needs --test FILE"),
        (["--test", "preds.npz"], "--test needs an input file"),
        (["--labels", "labels.npy"], "--labels needs an input file"),
        (["preds.npz", "--out", "afile"], "--out afile: exists and is not a folder"),
        (["preds.npz", "--out", "afile/sub"], "--out afile/sub: afile is a file, not a folder"),
        (["preds.npz", "--out", "afile/a/b"], "--out afile/a/b: afile is a file, not a folder"),
        (["preds.npz", "--out", "existing"], "the output folder exists; pass --force"),
        (["--out", "existing"], "the output folder exists; pass --force"),
        (["--out", "afile/demo"], "afile is a file, not a folder"),
    ]
    for args, match in cases:
        cli.error("calibrate", *args, match=match)
    assert sorted(os.listdir("existing")) == []


def test_apply_path_errors_exit_2_before_any_work(cli, files, no_work):
    t = ["--temperature", "2"]
    pathlib.Path("report.json").write_text("{}")
    cases = [
        (["missing.npy", *t, "--out", "p.npy"], "missing.npy: no such file"),
        (["afile/x.npy", *t, "--out", "p.npy"], "afile is a file, not a folder"),
        (["logits.npy", "--report", "missing.json", "--out", "p.npy"],
         "--report missing.json: no such file"),
        (["logits.npy", "--report", "adir", "--out", "p.npy"],
         "--report adir: is a folder, expected a file"),
        (["logits.npy", *t, "--out", "adir"], "unsupported output type"),
        (["logits.npy", *t, "--out", "existing.npy"], "existing.npy: exists; pass --force"),
        (["logits.npy", *t, "--out", "nodir/p.npy"], "no such folder nodir"),
        (["logits.npy", *t, "--out", "afile/p.npy"], "afile is a file, not a folder"),
        (["logits.npy", *t, "--out", "afile/a/p.npy"], "afile is a file, not a folder"),
    ]
    cases.append((["logits.npy", *t, "--out", "adir.npy"], "is a folder, expected a file"))
    for args, match in cases:
        cli.error("apply", *args, match=match)


#: A fresh interpreter that runs ``logitkit`` as an ordinary user (root writes anywhere, so only
#: then do folder modes bind) with every reader replaced by a failure: it loads as the user who
#: started it (the interpreter may live where an ordinary user cannot read), then drops root.
AS_ORDINARY_USER = f"""
import os, sys
from logitkit.cli import _apply, _calibrate, _demo, main

def forbidden(*args, **kwargs):
    raise AssertionError("a file was read before every path was checked")

_calibrate.read_inputs = _apply.read_inputs = _demo.make_demo = forbidden
if os.geteuid() == 0:
    import contextlib, io, locale, tempfile  # what the command imports late, while readable
    with contextlib.redirect_stderr(io.StringIO()):
        main(["calibrate", "--out", tempfile.gettempdir()])  # parses, prints an error
    os.setgid({NOBODY})
    os.setuid({NOBODY})
sys.exit(main(sys.argv[1:]))
"""


def test_unwritable_output_folder_exits_2_before_any_work(make_data):
    # A folder every user can enter and none but its owner can write, outside pytest's private
    # temporary folder (which an ordinary user cannot enter).
    base = pathlib.Path(tempfile.mkdtemp(prefix="logitkit-ro-"))
    try:
        z, y = make_data(50, 3)
        np.savez(base / "preds.npz", logits=z, labels=y)
        (base / "ro").mkdir()
        (base / "ro" / "existing").mkdir()
        for p in (base / "ro" / "existing", base / "ro"):
            p.chmod(0o555)
        base.chmod(0o755)
        (base / "preds.npz").chmod(0o644)
        argvs = [
            (["calibrate", "preds.npz", "--out", "ro/new"], "--out ro/new: cannot write in ro"),
            (["calibrate", "preds.npz", "--out", "ro/existing", "--force"],
             "--out ro/existing: cannot write in ro/existing"),
            (["calibrate", "--out", "ro/demo"], "--out ro/demo: cannot write in ro"),
            (["apply", "preds.npz", "--temperature", "2", "--out", "ro/p.npy"],
             "--out ro/p.npy: cannot write in ro"),
        ]
        for argv, match in argvs:
            proc = subprocess.run([sys.executable, "-c", AS_ORDINARY_USER, *argv], cwd=base,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 2, (argv, proc.stderr)
            assert proc.stderr.count("\n") == 1 and match in proc.stderr, proc.stderr
            assert "Permission denied" in proc.stderr and "Traceback" not in proc.stderr
        assert sorted(os.listdir(base / "ro")) == ["existing"]
        assert os.listdir(base / "ro" / "existing") == []
    finally:
        for p in (base / "ro", base / "ro" / "existing"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(base)


def test_existing_output_needs_force_and_writes_are_atomic(make_data, cli):
    z, y = make_data()
    np.savez("preds.npz", logits=z, labels=y)
    assert cli.run("calibrate", "preds.npz", "--out", "out")[0] == 0
    before = pathlib.Path("out/report.json").read_text()
    cli.error("calibrate", "preds.npz", "--out", "out", match="--force")
    assert pathlib.Path("out/report.json").read_text() == before
    np.savez("preds.npz", logits=z[:200], labels=y[:200])
    code, _, _ = cli.run("calibrate", "preds.npz", "--out", "out", "--force")
    assert code == 0
    assert pathlib.Path("out/report.json").read_text() != before
    assert sorted(os.listdir("out")) == ["reliability.png", "report.json"]  # no temp files


def test_force_refuses_a_folder_where_it_would_write_a_file_before_any_work(cli, files, no_work):
    # --force replaces report.json and reliability.png: a folder of either name is refused
    # before the fit (not an internal IsADirectoryError after it, the new diagram written)
    for name in ("report.json", "reliability.png"):
        pathlib.Path(f"out-{name}", name).mkdir(parents=True)
        cli.error("calibrate", "preds.npz", "--out", f"out-{name}", "--force",
                  match=f"--out out-{name}: out-{name}/{name} is a folder, expected a file")
        assert os.listdir(f"out-{name}") == [name]


def test_paths_are_checked_before_the_scheduler_is_reached(cli, files, monkeypatch):
    import time

    from logitkit.cli import _scheduler

    def forbidden(address):
        raise AssertionError("the scheduler was reached before every path was checked")

    monkeypatch.setattr(_scheduler, "on_cluster", forbidden)
    start = time.perf_counter()
    cli.error("calibrate", "nosuch.npz", "--scheduler", "tcp://127.0.0.1:1", "--out", "q",
              match="nosuch.npz: no such file")
    cli.error("calibrate", "preds.npz", "--scheduler", "tcp://127.0.0.1:1", "--out", "afile/q",
              match="--out afile/q: afile is a file, not a folder")
    assert time.perf_counter() - start < 5  # well under the 10 s connect timeout


def test_force_without_a_diagram_removes_the_earlier_runs_diagram(make_data, cli):
    z, y = make_data()
    np.savez("preds.npz", logits=z, labels=y)
    pathlib.Path("out").mkdir()
    pathlib.Path("out/mine.txt").write_text("keep")
    cli.ok("calibrate", "preds.npz", "--out", "out", "--force", "--resamples", "0")
    assert pathlib.Path("out/reliability.png").is_file()
    cli.ok("calibrate", "preds.npz", "--out", "out", "--force", "--no-diagram",
           "--resamples", "0")
    assert cli.report("out")["diagram"] is None
    # the old diagram showed another fit: gone; nothing else in the folder is touched
    assert sorted(os.listdir("out")) == ["mine.txt", "report.json"]
