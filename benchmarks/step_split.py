"""Light steps and detail steps apart: what one watched step of each kind costs.

Run:  python benchmarks/step_split.py [--model Tiny] [--rounds 60]

One thread.  Plain blocks of 10 steps alternate with watched blocks of 20 steps on one
scope (default options; attached only during its blocks); each watched step is timed
alone and filed as light or detail by the scope's plan for it.  Prints the median light
and detail step over the median plain step, and the total-time ratio over all watched
steps (what ``benchmarks/overhead.py`` calls the mean).  The models are those of
``benchmarks/overhead.py``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import gradscope

sys.path.insert(0, str(Path(__file__).parent))
import overhead  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Tiny", help="start of a benchmarks/overhead.py name")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=gradscope.GradscopeWarning)
    name = next(k for k in overhead.MODELS if k.startswith(args.model))
    torch.manual_seed(0)
    model, (x, y) = overhead.MODELS[name]()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> int:
        t0 = time.perf_counter_ns()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter_ns() - t0

    for _ in range(20):
        step()
    scope = gradscope.Scope(model, optimizer=opt)
    plain: list[int] = []
    light: list[int] = []
    detail: list[int] = []
    for _ in range(args.rounds):
        gc.disable()  # no collection inside a round (a gc.collect() first slows the plain block)
        plain += [step() for _ in range(10)]
        scope.attach()
        for _ in range(20):
            kind = detail if scope._detail_now else light
            kind.append(step())
        scope.detach()
        gc.enable()
    base = statistics.median(plain)
    watched = (sum(light) + sum(detail)) / (len(light) + len(detail))
    print(
        f"{name}: plain {base / 1e6:.3f} ms; light step {statistics.median(light) / base:.3f}x "
        f"({len(light)} steps), detail step {statistics.median(detail) / base:.3f}x "
        f"({len(detail)} steps); all watched steps (total time) "
        f"{watched / (sum(plain) / len(plain)):.3f}x"
    )


if __name__ == "__main__":
    main()
