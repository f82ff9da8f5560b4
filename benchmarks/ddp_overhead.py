"""Overhead of gradscope's default watch() under DDP, against a plain DDP step in the same run.

Run:  python benchmarks/ddp_overhead.py --ddp [--rounds 7] [--block 20] [--out FILE]
      python benchmarks/ddp_overhead.py           (the same measurement on one process)

``--ddp`` spawns 2 processes (gloo, 127.0.0.1, one thread each) that train the
MLP 784-512x4-10 wrapped in DistributedDataParallel, each rank on its half of a
batch of 128.  Each round runs three blocks of ``--block`` steps: plain DDP, the
same DDP model watched by one scope (kept across rounds, as in one long run, and
detached during the plain blocks), then plain again.  A round's figure is the
median step time of its watched block over that of its first plain block; the
second plain block over the first is the A/A row (how far noise alone moves a
ratio).  Results are medians over rounds, with quartiles over rounds.
gradscope's own measured time per recorded step (``scope.overhead()``, which
includes the exchange between ranks) is printed too, as it is steadier than a
ratio on a loaded machine.  Rank 0's clock is used (DDP's all-reduce keeps the
ranks in step).  See gradscope/distributed.py for what is exchanged on which step.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradscope

WORLD = 2


def mlp() -> nn.Module:
    """The MLP of benchmarks/overhead.py: 784-512x4-10 with ReLU."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(784, 512), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    layers.append(nn.Linear(512, 10))
    return nn.Sequential(*layers)


def _block(model, opt, batch, steps: int, scope) -> list[float]:
    """Step times (seconds) of ``steps`` training steps."""
    x, y = batch
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        if scope is not None:
            scope.log_loss(loss)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def measure(model: nn.Module, batch: tuple, rounds: int, block: int) -> dict:
    """Alternate plain and watched blocks on one model; the per-round median ratios."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    _block(model, opt, batch, block, None)  # warm-up
    scope = gradscope.watch(model, optimizer=opt)
    scope.detach()
    ratios, noise, plain_ms = [], [], []
    for _ in range(rounds):
        plain = statistics.median(_block(model, opt, batch, block, None))
        scope.attach()
        watched = statistics.median(_block(model, opt, batch, block, scope))
        scope.detach()
        again = statistics.median(_block(model, opt, batch, block, None))
        ratios.append(watched / plain)
        noise.append(again / plain)
        plain_ms.append(plain * 1e3)
    return {
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": _quartiles(ratios),
        "aa_ratio_median": statistics.median(noise),
        "aa_ratio_quartiles": _quartiles(noise),
        "plain_step_ms": statistics.median(plain_ms),
        "ratios": ratios,
        "recorded_steps": scope.history.recorded,
        "own_ms_per_recorded_step": scope.overhead()["seconds_per_step"] * 1e3,
        "report_ok": scope.report().ok,
    }


def _quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return [q[0], q[2]]


def _rank(rank: int, port: int, rounds: int, block: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        g = torch.Generator().manual_seed(rank)
        batch = (torch.randn(128 // WORLD, 784, generator=g), torch.randint(0, 10, (64,)))
        model = nn.parallel.DistributedDataParallel(mlp())
        result = measure(model, batch, rounds, block)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp", action="store_true", help="2 gloo processes with DDP")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ddp:
        tmp = Path(args.out or "ddp_overhead.tmp.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(port, args.rounds, args.block, str(tmp)), nprocs=WORLD)
        result = json.loads(tmp.read_text())
        if args.out is None:
            tmp.unlink()
    else:
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,)))
        result = measure(mlp(), batch, args.rounds, args.block)
    result.update(
        mode="ddp, 2 gloo processes" if args.ddp else "one process",
        torch=torch.__version__,
        python=platform.python_version(),
        rounds=args.rounds,
        block=args.block,
    )
    lo, hi = result["ratio_quartiles"]
    aa_lo, aa_hi = result["aa_ratio_quartiles"]
    print(
        f"{result['mode']}: plain step {result['plain_step_ms']:.1f} ms; gradscope default "
        f"{result['ratio_median']:.2f}x ({lo:.2f}-{hi:.2f}); plain again (A/A: noise) "
        f"{result['aa_ratio_median']:.2f}x ({aa_lo:.2f}-{aa_hi:.2f}); over {args.rounds} rounds of "
        f"{args.block} steps; gradscope's own time {result['own_ms_per_recorded_step']:.2f} ms "
        "per recorded step"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
