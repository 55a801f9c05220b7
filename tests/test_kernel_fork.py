"""The kernels in the children of a fork, after the parent used them on its thread pool.

A fork copies only the forking thread: a pool whose threads were started before the fork has
none in the child.  The kernels' pool abandons itself in the child (``pthread_atfork``) and the
child's first parallel call starts a new one.  Each scenario runs in a fresh interpreter (a
pytest worker has threads of its own that a fork would copy the state of), and every child
must give the parent's exact result within 10 s.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")

PRELUDE = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import logitkit
    from logitkit._kernels import native

    assert native().num_threads() == 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 4096)).astype(np.float32)  # above the serial threshold
    t = rng.integers(0, 4096, 256)
    jobs = native().pool_jobs()
    expected = (logitkit.softmax(x), logitkit.cross_entropy_with_grad(x, t)[1],
                logitkit.log_softmax(x.reshape(16, 16, 4096), axis=1))
    assert native().pool_jobs() > jobs  # the parent's pool ran

    def compute(_=None):
        # Every kernel's exact result, and (within 8 s) a helper thread seen at work: the
        # child has a pool of its own, not the parent's threads that the fork left behind.
        helped = native().pool_helper_tasks()
        deadline = time.monotonic() + 8
        while True:
            got = (logitkit.softmax(x), logitkit.cross_entropy_with_grad(x, t)[1],
                   logitkit.log_softmax(x.reshape(16, 16, 4096), axis=1))
            if not all(np.array_equal(a, b) for a, b in zip(got, expected)):
                return False
            if native().pool_helper_tasks() > helped or time.monotonic() > deadline:
                return native().pool_helper_tasks() > helped
""")


def run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    env = {"LOGITKIT_NUM_THREADS": "2"}
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout.strip()


def test_os_fork_child_computes_with_its_own_pool():
    out = run("""
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if compute() else 3)
            children.append(pid)
        deadline = time.monotonic() + 10
        codes = []
        for pid in children:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes.append(os.waitstatus_to_exitcode(status))
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    codes.append("timeout")
                    break
                time.sleep(0.01)
        print(codes, compute())
    """)
    assert out == "[0, 0, 0] True"


def test_multiprocessing_fork_pool():
    out = run("""
        import multiprocessing as mp
        with mp.get_context("fork").Pool(2) as pool:
            print(pool.map_async(compute, range(4)).get(timeout=10))
    """)
    assert out == "[True, True, True, True]"


def test_torch_dataloader_with_two_fork_workers():
    pytest.importorskip("torch")
    out = run("""
        import torch
        from torch.utils.data import DataLoader, Dataset

        class Rows(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                return torch.tensor(compute())

        loader = DataLoader(Rows(), batch_size=None, num_workers=2,
                            multiprocessing_context="fork", timeout=10)
        print([bool(b) for b in loader])
    """)
    assert out == "[True, True, True, True]"
