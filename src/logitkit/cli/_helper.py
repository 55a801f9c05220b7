"""A helper process, forked before the work starts, that prepares for one job and then runs it.

``logitkit calibrate`` spends most of its time in two single-threaded stretches of Python: the
fit (cross-validating every method) and the reliability diagram (importing matplotlib, ~0.4 s,
then drawing, ~0.3 s).  On a machine with two cores a child forked before the fit imports
matplotlib while the parent reads the data and fits, then draws the figure from the figures the
parent sends it: the import no longer adds to the wall time.

Robustness, in order of what can go wrong:

- **Only where fork is safe and cheap**: on Linux (fork is the default there; macOS's system
  frameworks are not fork-safe, Windows has no fork), from a process that runs no other Python
  thread and has not loaded JAX (:func:`available`).  Elsewhere, or when the fork fails,
  :meth:`Helper.call` runs the job in the calling process.
- **Fork before anything that starts threads**: the command starts the helper after its
  arguments and paths are checked and before it reads, fits or draws anything, and never with
  ``--scheduler`` (a Dask client runs threads).  The child only imports and draws; it never
  writes to the terminal and ends with ``os._exit`` (no inherited buffers flushed twice, no
  inherited lock taken).
- **Only with a core to spare** (:func:`idle_core`, the caller's choice): on a loaded machine
  two processes only share the same cores.
- **Any failure falls back in-process**: a child that died, raised, or did not answer within
  :data:`TIMEOUT` seconds at any step is ended and the job runs in the calling process, so the
  result, and any error, are exactly those of a run without the helper.
- **No process left behind**: :meth:`Helper.close` (also on leaving the ``with`` block, by an
  error or Ctrl-C) terminates and reaps the child; the child ignores SIGINT (a Ctrl-C at the
  terminal reaches the whole process group: the parent reports it and ends the child), and if
  the parent dies the closed pipe ends the child.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..config import cpus_available

#: Seconds the parent waits for each answer of the child (ready, result) before it gives up on
#: it and runs the job itself.
TIMEOUT = 30.0
_READY = "ready"


#: Modules whose runtime threads make a fork unsafe (JAX warns that a fork of its process
#: will likely deadlock): with one of them loaded the job runs in-process.
FORK_HOSTILE = ("jax",)


def available() -> bool:
    """Whether a helper can be forked here: on Linux (the fork start method), from a process
    running no other Python thread (one could hold a lock the child needs) and no runtime in
    :data:`FORK_HOSTILE`.  Native pools (BLAS's, this package's kernels') re-create themselves
    in a child and do not count."""
    return (sys.platform.startswith("linux")
            and "fork" in multiprocessing.get_all_start_methods()
            and not _other_threads()
            and not any(name in sys.modules for name in FORK_HOSTILE))


def _other_threads() -> bool:
    return threading.active_count() > 1


def idle_core() -> bool:
    """Whether a core is idle for a helper: the 1-minute load average below the CPUs this
    process may use, less a quarter of one (a benchmark running commands back to back keeps
    the load near 1 by itself).  On a busy machine the helper only competes with its
    parent for the same cores (the demo at a load of 13-16 on two cores: 1.46× the wall time
    of drawing in-process, 1.2× the CPU time), so it is not forked there."""
    cpus = cpus_available()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average: assume a busy machine
        return False
    return load < cpus - 0.25


def _serve(conn: Any, prepare: Callable[[], Any] | None) -> None:
    """The child: ``prepare()``, say so, run the one job it is sent, send its result, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # blocked since the fork: now discarded
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    code = 0
    try:
        if prepare is not None:
            prepare()
        conn.send(_READY)
        fn, args, kwargs = conn.recv()
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException:  # the parent runs the job itself, and reports any error there
        code = 1
        try:
            conn.send(("error", None))
        except BaseException:
            pass
    finally:
        os._exit(code)


class Helper:
    """A forked child that runs ``prepare()`` at once and then one job (:meth:`submit`,
    :meth:`result`; or both at once, :meth:`call`).

    Args:
        prepare: run in the child as soon as it starts (e.g. imports), while the parent works.
        enabled: False runs every call in-process (no child).

    Examples:
        >>> import os
        >>> with Helper() as helper:
        ...     pid = helper.call(os.getpid)
        >>> isinstance(pid, int)
        True
    """

    def __init__(self, prepare: Callable[[], Any] | None = None, *, enabled: bool = True
                 ) -> None:
        self._proc: Any = None
        self._conn: Any = None
        self._job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
        self._sent = False
        if not (enabled and available()):
            return
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is inherited
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        proc = ctx.Process(target=_serve, args=(child, prepare), daemon=True,
                           name="logitkit-helper")
        # SIGINT is blocked across the fork, so that a Ctrl-C cannot reach the child before it
        # ignores it (a traceback from the child)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns on fork in a process with threads (BLAS's pool, this
                # package's kernel pool): both re-create themselves in the child, which only
                # draws
                warnings.simplefilter("ignore", DeprecationWarning)
                proc.start()
        except (OSError, AssertionError):  # no fork here (limits, seccomp; a daemonic
            parent.close()                   # multiprocessing worker): work in-process
            child.close()
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        self._proc, self._conn = proc, parent

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (None without one)."""
        return None if self._proc is None else int(self._proc.pid)

    @property
    def submitted(self) -> bool:
        """Whether the job was given (:meth:`submit`)."""
        return self._job is not None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Give the job ``fn(*args, **kwargs)``; :meth:`result` returns what it returned.

        It goes to the child now if the child is ready (else when :meth:`result` is asked
        for), so the caller goes on working while the child runs it.  ``fn`` and its arguments
        are pickled to the child (``fn`` by reference: a module-level function).
        """
        if self._job is not None:
            raise RuntimeError("a Helper runs one job")
        self._job = (fn, args, kwargs)
        if self._proc is not None:
            self._send(0.0)

    def result(self) -> Any:
        """The job's result: from the child when there is one and it answers, else computed
        here (so an error is the job's own, raised here).  The child is ended afterwards."""
        if self._job is None:
            raise RuntimeError("no job was submitted")
        fn, args, kwargs = self._job
        if self._proc is not None:
            try:
                if (self._sent or self._send(TIMEOUT)) and self._conn.poll(TIMEOUT):
                    status, value = self._conn.recv()
                    if status == "ok":
                        return value
            except (OSError, EOFError, pickle.PickleError, AttributeError, TypeError):
                pass  # a dead child, or an answer that does not unpickle
            finally:
                self.close()
        return fn(*args, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``: :meth:`submit` then :meth:`result`."""
        self.submit(fn, *args, **kwargs)
        return self.result()

    def _send(self, wait: float) -> bool:
        """Send the job once the child says it is ready (waiting ``wait`` seconds at most).
        False if it is not ready yet, or cannot take it (then it is ended)."""
        try:
            if not self._conn.poll(wait):
                return False
            if self._conn.recv() == _READY:
                self._conn.send(self._job)
                self._sent = True
                return True
        except (OSError, EOFError, pickle.PickleError, AttributeError, TypeError):
            pass  # a dead child, or a job that does not pickle
        self.close()
        return False

    def close(self) -> None:
        """End and reap the child (nothing when there is none)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._conn.close()
        if proc.is_alive():
            proc.terminate()
        proc.join(5.0)
        if proc.is_alive():  # pragma: no cover - SIGTERM is not ignored by the child
            proc.kill()
            proc.join()
        proc.close()

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
