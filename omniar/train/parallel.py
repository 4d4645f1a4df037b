"""Data parallelism over processes, applied from outside the model (the model stays single-device and plain).

A training step's batch is cut into `shards` pieces; with `world` processes, process `rank` computes the
gradients of its `shards / world` pieces one after another, and one all-reduce of a flat buffer sums them across
processes before clipping, so every process takes the same optimizer step and the weights never drift apart.
With one process the same pieces run in turn (gradient accumulation): the same update up to the order of float
sums, which is a test (tests/test_parallel.py).

On a CPU, two single-threaded processes train faster than one two-threaded process: the small matrix products of a
tiny model scale poorly over threads (bench/train_parallel.py). `launch` starts the processes (gloo on
127.0.0.1); under `torchrun` build `DataParallel()` after `torch.distributed.init_process_group`.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from omniar.train.interrupt import INTERRUPTED, TERMINATED


class DataParallel:
    """The current process group's rank and size, and the collectives a `Trainer` needs."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("data parallelism needs a process group: start the processes with "
                               "omniar.train.parallel.launch, or call torch.distributed.init_process_group first")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_(self, model: nn.Module) -> None:
        """Make every process's weights and buffers rank 0's (one flat buffer)."""
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, 0)
        with torch.no_grad():
            for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(v.view_as(t))

    def sum_gradients_(self, params: Sequence[nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (in place). A parameter no process touched keeps no
        gradient, as in one process, so the optimizer skips it there too."""
        grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
        touched = torch.tensor([float(p.grad is not None) for p in params])
        flat = torch.cat([*grads, touched])
        dist.all_reduce(flat)
        parts = flat.split([p.numel() for p in params] + [len(params)])
        for p, g, used in zip(params, parts[:-1], parts[-1]):
            p.grad = g.view_as(p) if used > 0 else None  # views of the reduced buffer: no copy

    def gather(self, obj) -> list:
        """Every process's `obj` (small picklable values: metrics), in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable, world: int, port: int, threads: int, timeout: float, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    code = 0
    try:
        fn(*args)
    except KeyboardInterrupt:  # Ctrl-C (a Trainer saves first): the parent learns of it from the exit code
        code = INTERRUPTED
    except SystemExit as e:  # SIGTERM (likewise)
        if e.code != TERMINATED:
            raise
        code = TERMINATED
    finally:
        dist.destroy_process_group()
    if code:  # stopped mid-run: leave without the interpreter's teardown, which could abort on a thread of the
        # process group's still being joined ("terminate called without an active exception": SIGABRT, not this code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def launch(fn: Callable, world: int, *args, threads: int = 1, timeout: float = 1800.0) -> None:
    """Run `fn(*args)` in `world` fresh processes joined in a gloo process group (`DataParallel()` inside them),
    each with `threads` threads; returns when all are done and raises if one fails, or if a collective waits more
    than `timeout` seconds for the others (torch's default, 30 minutes). `fn` must be importable (a
    module-level function); results go through files (checkpoints), as rank 0 writes them. Workers stopped by
    Ctrl-C or SIGTERM (a `Trainer` in them saves a checkpoint first) raise KeyboardInterrupt or SystemExit here."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    try:
        mp.spawn(_worker, args=(fn, world, _free_port(), threads, timeout, args), nprocs=world, join=True)
    except mp.ProcessExitedException as e:
        if e.exit_code == INTERRUPTED:
            raise KeyboardInterrupt from None
        if e.exit_code == TERMINATED:
            raise SystemExit(TERMINATED) from None
        raise
