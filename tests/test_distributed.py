"""vocab_parallel_cross_entropy on 2 and 4 gloo ranks equals the single-process cross-entropy.

The multi-process cases run this file as a script in a subprocess (``torch.multiprocessing``
spawns the ranks, which rendezvous on a free localhost port); the subprocess has a deadline and
its whole process group is killed when it passes, so a hang cannot stall the suite.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import torch_cross_entropy
from logitkit import LogitkitTypeError, LogitkitValueError
from logitkit.distributed import vocab_parallel_cross_entropy

IGNORE = -100
V = 23  # not a multiple of 2 or 4: the ranks' slices differ in size
CASES = [
    ({}, "mean"),
    ({"ignore_index": IGNORE}, "sum"),
    ({"label_smoothing": 0.15, "z_loss": 0.02}, "none"),
    ({"softcap": 4.0, "ignore_index": IGNORE, "label_smoothing": 0.1}, "mean"),
]


def make_case(seed, opts, reduction):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(3, 5, V, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, (3, 5), generator=g)
    if "ignore_index" in opts:
        target[0, ::2] = IGNORE
    grad_out = torch.randn((3, 5) if reduction == "none" else (), generator=g,
                           dtype=torch.float64)
    full = logits.clone().requires_grad_(True)
    ref = torch_cross_entropy(full, target, reduction=reduction, **opts)
    (ref_grad,) = torch.autograd.grad(ref, full, grad_out)
    return logits, target, grad_out, ref.detach(), ref_grad


def check_shard(rank, world, seed, opts, reduction, group=None):
    """This rank's slice: loss and gradient equal the full computation's."""
    logits, target, grad_out, ref, ref_grad = make_case(seed, opts, reduction)
    bounds = [len(part) for part in torch.tensor_split(torch.arange(V), world)]
    lo = sum(bounds[:rank])
    hi = lo + bounds[rank]
    shard = logits[..., lo:hi].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(shard, target, group=group, reduction=reduction, **opts)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-12, atol=1e-12)
    loss.backward(grad_out)
    torch.testing.assert_close(shard.grad, ref_grad[..., lo:hi], rtol=1e-12, atol=1e-12)


def _record(line):
    # One write(2) of less than PIPE_BUF bytes is atomic: ranks sharing the pipe cannot tear it
    # (print() may split the text and its newline into two writes).
    os.write(1, (line + "\n").encode())


def _worker(rank, world, port):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        calls = []
        all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return all_reduce(*args, **kwargs)

        dist.all_reduce = counting_all_reduce
        for i, (opts, reduction) in enumerate(CASES):
            calls.clear()
            check_shard(rank, world, 100 + i, opts, reduction)
            # slice sizes, max, and (exponentials, target logit, logit sum): none in backward
            assert len(calls) == 3, calls
            _record(f"checked rank={rank} case={i}")
        dist.all_reduce = all_reduce
        if world == 4:
            # Two groups of two ranks (tensor-parallel pairs) on different data.
            pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
            check_shard(rank % 2, 2, 200 + rank // 2, *CASES[3], group=pairs[rank // 2])
            _record(f"checked rank={rank} case=groups")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(world, port):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, port), nprocs=world, join=True)


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_gloo_ranks_equal_single_process(world):
    proc = subprocess.Popen([sys.executable, __file__, str(world), str(_free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{world} ranks did not finish in time:\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0, err[-4000:]
    # The ranks share the pipe, so their lines may interleave: match the records, not lines.
    checked = re.findall(r"checked rank=(\d+) case=(\d+|groups)", out)
    cases = [str(i) for i in range(len(CASES))] + (["groups"] if world == 4 else [])
    assert sorted(checked) == sorted((str(r), c) for r in range(world) for c in cases), out


@pytest.mark.parametrize(("opts", "reduction"), CASES)
def test_without_process_group_it_is_the_plain_cross_entropy(opts, reduction):
    check_shard(0, 1, 7, opts, reduction)


def test_half_precision_accumulates_in_float32():
    logits, target, _, ref, _ = make_case(8, {}, "mean")
    shard = logits.to(torch.bfloat16).requires_grad_(True)
    loss = vocab_parallel_cross_entropy(shard, target)
    assert loss.dtype == torch.bfloat16
    loss.backward()
    assert shard.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=2e-2)


def test_gradient_keeps_its_digits_at_large_logits():
    """p = e^{z − m}/s, not e^{z − lse}: float32 logits 1e4 + N(0, 1) lost 1e-5 of every
    probability to the rounding of lse (the kernel's cross-entropy keeps 1e-8)."""
    from logitkit.losses import cross_entropy_with_grad

    g = torch.Generator().manual_seed(0)
    z = 1e4 + torch.randn(4, 50, generator=g)
    y = torch.randint(0, 50, (4,), generator=g)
    _, exact = cross_entropy_with_grad(z.double(), y)
    x = z.clone().requires_grad_(True)
    vocab_parallel_cross_entropy(x, y).backward()
    assert (x.grad.double() - exact).abs().max() < 5e-8


def test_every_token_ignored():
    logits = torch.randn(4, 6, requires_grad=True)
    target = torch.full((4,), IGNORE)
    loss = vocab_parallel_cross_entropy(logits, target, ignore_index=IGNORE)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "error", "match"),
    [
        ([[1.0, 2.0]], torch.tensor([0]), {}, LogitkitTypeError, "`logits_shard`"),
        (torch.ones(2, 3), [0, 1], {}, LogitkitTypeError, "`target`"),
        (torch.ones(2, 3), torch.tensor([0.0, 1.0]), {}, LogitkitTypeError, "integer"),
        (torch.ones(2, 3), torch.tensor([0, 1, 2]), {}, LogitkitValueError, "shape"),
        (torch.ones(2, 3), torch.tensor([0, 3]), {}, LogitkitValueError, r"\[0, 3\)"),
        (torch.ones(2, 3), torch.tensor([0, 1]), {"reduction": "avg"}, LogitkitValueError,
         "`reduction`"),
        (torch.ones(2, 3), torch.tensor([0, 1]), {"label_smoothing": -0.1}, LogitkitValueError,
         "`label_smoothing`"),
        (torch.ones(2, 3), torch.tensor([0, 1]), {"group": object()}, LogitkitValueError,
         "`group`"),
    ],
)
def test_bad_input_raises_one_clear_error(logits, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        vocab_parallel_cross_entropy(logits, target, **kwargs)


if __name__ == "__main__":
    _run_ranks(int(sys.argv[1]), int(sys.argv[2]))
