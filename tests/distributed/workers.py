"""What each rank runs in the distributed tests (importable, so spawn can pickle it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradscope

WORLD = 2
GLOBAL_BATCH = 16


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Any, out: Path, *args: Any) -> list[dict[str, Any]]:
    """Run ``fn(rank, port, out, *args)`` on two gloo ranks; return each rank's JSON result."""
    mp.spawn(fn, args=(free_port(), str(out), *args), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


class Log(torch.nn.Module):
    """log(x): -inf where x underflowed to 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def mlp() -> torch.nn.Module:
    """A small seeded ReLU regression MLP."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
    )


def sigmoid_log_net() -> torch.nn.Module:
    """Linear-Sigmoid-Log-Linear: finite unless an input drives the sigmoid to 0."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Sigmoid(), Log(), torch.nn.Linear(16, 1)
    )


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of a run, the same on every rank."""
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_BATCH, 8, generator=g), torch.randn(GLOBAL_BATCH, 1, generator=g))
        for _ in range(steps)
    ]


def run_plain(model: torch.nn.Module, steps: int) -> dict[str, Any]:
    """Single-process reference: the same model on the whole global batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, optimizer=opt) as scope:
        for x, y in batches(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    return _result(scope)


def _result(scope: gradscope.Scope) -> dict[str, Any]:
    report = scope.report()
    return {
        "grad_l2": [r.grads["grad_l2"] for r in scope.history.records],
        "param_norm": [r.grads["param_norm"] for r in scope.history.records],
        "loss": [r.loss for r in scope.history.records],
        "findings": [
            {
                "kind": f.kind,
                "layer": f.layer,
                "message": f.message,
                "ranks": f.evidence.get("ranks"),
            }
            for f in report.findings
        ],
        "notes": report.notes,
    }


def train(rank: int, port: int, out: str, mode: str, steps: int, bad_from: int = -1) -> None:
    """One rank: DDP or FSDP2 training on its half of each global batch, watched.

    ``bad_from``: from this step on, rank 1's inputs are scaled 1e4 (the net's sigmoid
    underflows to 0, its Log makes -inf).
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        base = sigmoid_log_net() if bad_from >= 0 else mlp()
        if mode == "ddp":
            model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(base)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in base:
                if any(True for _ in layer.parameters()):
                    fully_shard(layer)
            model = fully_shard(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        half = GLOBAL_BATCH // WORLD
        with gradscope.watch(model, optimizer=opt) as scope:
            for step, (x, y) in enumerate(batches(steps)):
                xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
                if rank == 1 and 0 <= bad_from <= step:
                    xs = xs * 1e4
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xs), ys)
                scope.log_loss(loss)
                loss.backward()
                opt.step()
        result = _result(scope)
        result["class"] = type(scope.report()).__name__
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        # Both ranks done before either tears gloo down: a rank that destroyed the group
        # while its peer was still in the last collective aborted once in CI (SIGABRT,
        # "terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
