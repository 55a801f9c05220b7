"""The diagram's helper process: it returns what the job returns, falls back in-process on any
failure, survives fork after kernel use and beside threads, and never outlives the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from logitkit import softmax
from logitkit.cli import _calibrate, _helper
from logitkit.cli._helper import Helper

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper forks (Linux)"),
    # JAX, when another test of this process loaded it, warns at every fork (these tests force
    # the fork; JAX is unused in the child)
    pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning"),
]


OTHER_THREADS = _helper._other_threads


@pytest.fixture(autouse=True)
def forkable(monkeypatch):
    # other tests of this process may have left Python threads behind (Dask's) or loaded JAX:
    # the helper declines to fork then (test below); these tests force it
    monkeypatch.setattr(_helper, "FORK_HOSTILE", ())
    monkeypatch.setattr(_helper, "_other_threads", lambda: False)
    monkeypatch.setattr(_calibrate, "idle_core", lambda: True)  # whatever the machine's load

PREPARED: list[str] = []


@pytest.fixture
def helpers(monkeypatch):
    """``(enabled, pid)`` of every helper the command starts (pid None: none was forked)."""
    seen = []

    class Spy(Helper):
        def __init__(self, prepare=None, *, enabled=True):
            super().__init__(prepare, enabled=enabled)
            seen.append((enabled, self.pid))

    monkeypatch.setattr(_calibrate, "Helper", Spy)
    return seen


def _prepare() -> None:
    PREPARED.append("prepared")


def _pid_and_prepared() -> tuple[int, list[str]]:
    return os.getpid(), list(PREPARED)


def _die() -> None:
    os._exit(3)


def _fail() -> None:
    raise RuntimeError("prepare failed")


def _sleep() -> None:
    time.sleep(60)


def _only_here(parent: int) -> int:
    if os.getpid() != parent:
        raise ValueError("not in the child")
    return os.getpid()


def _always_fails() -> None:
    raise ValueError("the job's own error")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_job_runs_in_the_prepared_child_and_the_child_is_reaped():
    PREPARED.clear()
    with Helper(_prepare) as helper:
        pid = helper.pid
        assert pid is not None and pid != os.getpid()
        child, prepared = helper.call(_pid_and_prepared)
        assert helper.pid is None  # one job, then the child is ended
    assert child == pid and prepared == ["prepared"] and PREPARED == []
    assert _gone(pid)
    # disabled: in-process, no child
    with Helper(_prepare, enabled=False) as helper:
        assert helper.pid is None
        assert helper.call(_pid_and_prepared) == (os.getpid(), [])  # prepare: the child's


@pytest.mark.parametrize("prepare", [_die, _fail, None], ids=["dies", "raises", "job-raises"])
def test_a_child_that_dies_or_fails_leaves_the_job_to_the_parent(prepare):
    with Helper(prepare) as helper:
        pid = helper.pid
        assert helper.call(_only_here, os.getpid()) == os.getpid()
    assert _gone(pid)


def test_the_jobs_own_error_is_raised_here_and_an_unpicklable_job_runs_here():
    with Helper() as helper, pytest.raises(ValueError, match="the job's own error"):
        helper.call(_always_fails)
    with Helper() as helper:
        pid = helper.pid
        assert helper.call(lambda: os.getpid()) == os.getpid()  # a lambda does not pickle
    assert _gone(pid)


def _slow_prepare() -> None:
    time.sleep(0.5)


def test_submit_returns_at_once_and_result_waits_for_the_child():
    with Helper(_slow_prepare) as helper:
        pid = helper.pid
        start = time.perf_counter()
        helper.submit(_pid_and_prepared)  # the child is still preparing: sent later
        assert time.perf_counter() - start < 0.4 and helper.submitted
        with pytest.raises(RuntimeError, match="one job"):
            helper.submit(os.getpid)
        assert helper.result()[0] == pid
    with Helper() as helper, pytest.raises(RuntimeError, match="no job"):
        helper.result()


def test_the_diagram_is_submitted_before_the_other_candidates_are_measured(cli, data,
                                                                           monkeypatch):
    calls = []
    measure, submit = _calibrate.measure, _calibrate._submit_diagram

    def counting(*args, **kwargs):
        calls.append("measure")
        return measure(*args, **kwargs)

    def submitting(*args, **kwargs):
        calls.append("submit")
        return submit(*args, **kwargs)

    monkeypatch.setattr(_calibrate, "measure", counting)
    monkeypatch.setattr(_calibrate, "_submit_diagram", submitting)
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--out", "a")
    assert calls[:3] == ["measure", "measure", "submit"] and calls.count("measure") == 3
    calls.clear()
    np.savez("test.npz", logits=z[:100], labels=y[:100])
    cli.ok("calibrate", "preds.npz", "--method", "vector", "--test", "test.npz", "--out", "b")
    assert calls[:3] == ["measure", "measure", "submit"] and calls.count("measure") == 5
    assert os.path.exists("a/reliability.png") and os.path.exists("b/reliability.png")


def test_a_silent_child_is_given_up_after_the_timeout(monkeypatch):
    monkeypatch.setattr(_helper, "TIMEOUT", 0.2)
    start = time.perf_counter()
    with Helper(_sleep) as helper:
        pid = helper.pid
        assert helper.call(os.getpid) == os.getpid()
    assert time.perf_counter() - start < 10 and _gone(pid)


def test_no_child_outlives_an_error_or_an_interrupt():
    for exc in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(exc), Helper(_sleep) as helper:
            pid = helper.pid
            raise exc()
        assert _gone(pid)


def _softmax_and_png(z: np.ndarray, stats: list, level: float
                     ) -> tuple[int, np.ndarray, bytes]:
    from logitkit.cli._calibrate import _png

    return (os.getpid(), np.asarray(softmax(z)),
            _png(stats, ("before", "after"), level=level, title="t"))


def test_the_helper_forks_safely_after_kernel_use_and_not_beside_threads(monkeypatch):
    from logitkit.calibration import CalibrationStats
    from logitkit.cli._calibrate import _import_matplotlib

    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 500)).astype(np.float32) * 3  # large enough for the kernel pool
    y = rng.integers(0, 500, size=2000)
    expected = np.asarray(softmax(z))  # the kernel pool's threads now exist
    stats = [CalibrationStats(10).update(z, y, from_logits=True).compute()] * 2
    here = _softmax_and_png(z, stats, 0.9)
    with Helper(_import_matplotlib) as helper:
        child, child_softmax, png = helper.call(_softmax_and_png, z, stats, 0.9)
    assert child != os.getpid()  # the child answered (no deadlock, no fallback after TIMEOUT)
    np.testing.assert_array_equal(child_softmax, expected)
    assert png == here[2] and png[:8] == b"\x89PNG\r\n\x1a\n"
    # beside other Python threads (one could hold a lock the child needs), or with JAX
    # loaded, no fork: the job runs here, right
    monkeypatch.setattr(_helper, "_other_threads", OTHER_THREADS)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not _helper.available()
        with Helper(_import_matplotlib) as helper:
            assert helper.pid is None
            assert helper.call(_softmax_and_png, z, stats, 0.9)[0] == os.getpid()
    finally:
        stop.set()
        thread.join()
    monkeypatch.setattr(_helper, "_other_threads", lambda: False)
    assert _helper.available()
    monkeypatch.setattr(_helper, "FORK_HOSTILE", ("jax",))
    monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", object()))
    assert not _helper.available()


def test_the_command_draws_the_same_diagram_with_or_without_the_helper(cli, data, monkeypatch,
                                                                       helpers):
    enabled = helpers
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--out", "a")
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--out", "b", "--no-diagram")
    monkeypatch.setattr(_helper, "available", lambda: False)
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--out", "c")
    assert [e for e, _ in enabled] == [True, False, True]
    assert enabled[0][1] is not None and enabled[1][1] is None and enabled[2][1] is None
    with open("a/reliability.png", "rb") as a, open("c/reliability.png", "rb") as c:
        assert a.read() == c.read()
    assert not os.path.exists("b/reliability.png")


def test_a_user_error_after_the_helper_started_leaves_no_process(cli, data, helpers):
    import multiprocessing

    z, y = data
    np.savez("preds.npz", logits=z, labels=y + 10)  # found out of range once read
    cli.error("calibrate", "preds.npz", "--out", "a", match="out of range")
    started = [pid for _, pid in helpers]
    assert started and started[0] is not None and _gone(started[0])
    assert not multiprocessing.active_children()


def _helper_in_a_daemon(queue):
    with Helper() as helper:  # a daemonic process may not have children: in-process
        queue.put((helper.pid, helper.call(os.getpid) == os.getpid()))


def test_inside_a_daemonic_worker_the_job_runs_in_process():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_helper_in_a_daemon, args=(queue,), daemon=True)
    proc.start()
    assert queue.get(timeout=30) == (None, True)
    proc.join(30)
    assert proc.exitcode == 0


def test_no_helper_without_an_idle_core(cli, data, monkeypatch, helpers):
    cpus = len(os.sched_getaffinity(0))
    for load, idle in ((0.2, True), (cpus - 0.3, True), (cpus - 0.2, False), (3.0 * cpus, False)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert _helper.idle_core() is idle
    monkeypatch.setattr(_calibrate, "idle_core", _helper.idle_core)  # the real one: loaded
    z, y = data
    np.savez("preds.npz", logits=z, labels=y)
    cli.ok("calibrate", "preds.npz", "--method", "temperature", "--out", "a")
    assert helpers == [(False, None)] and os.path.exists("a/reliability.png")


def test_ctrl_c_ends_the_command_and_its_helper(tmp_path):
    # A terminal's Ctrl-C reaches the whole process group: the command says it was interrupted
    # (exit 130, one line), the helper prints nothing, and no process of the group is left.
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "big.npz", logits=rng.normal(size=(60000, 12)).astype(np.float32) * 4,
             labels=rng.integers(0, 12, size=60000))
    # any load; select takes at least 30 s, so the Ctrl-C lands while the command works; and
    # SIGINT handled as in a terminal's foreground job: a runner started in the background of
    # a non-interactive shell (`cmd &`) hands its children SIGINT ignored, and Python then
    # keeps it ignored (the command ran to the end, exit 0)
    command = ("import signal, sys, time; import logitkit.calibration as cal; "
               "signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from logitkit.cli import _calibrate, main; "
               "_calibrate.idle_core = lambda: True; real = cal.select; "
               "cal.select = lambda *a, **k: (time.sleep(30), real(*a, **k))[1]; "
               "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", command, "calibrate", str(tmp_path / "big.npz"),
                             "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    deadline = time.monotonic() + 60
    helper, readable = "", True
    while not helper and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with open(children) as fh:
                helper = fh.read().strip()
        except OSError:  # a kernel without the children list: interrupt a little later
            readable = False
            time.sleep(1.0)
            break
    assert helper or not readable
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["logitkit: interrupted"], err
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the group's last process may take a moment to be reaped
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
