"""Time rendering a large report: 200 layers x 1,000 recorded steps (target: < 5 s).

Run:  python benchmarks/render.py [--layers 200] [--steps 1000]

The history is synthetic (seeded random gradient norms with a vanishing trend and a
few non-finite cells), built directly, so only rendering is timed.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from gradscope import Finding, Report
from gradscope.history import History, StepRecord
from gradscope.statistics import ACT_COLUMNS, GRAD_COLUMNS


def synthetic_report(layers: int, steps: int) -> Report:
    g = torch.Generator().manual_seed(0)
    names = [f"encoder.blocks.{i}.mlp.fc" for i in range(layers)]
    history = History(
        param_names=[f"{n}.weight" for n in names],
        param_modules=names,
        module_names=names,
        module_types=["Linear"] * layers,
        capacity=max(2 * steps, 1024),
    )
    depth = torch.logspace(-6, 0, layers)
    for step in range(steps):
        noise = torch.rand(layers, generator=g) + 0.5
        l2 = (depth * noise).tolist()
        if step == steps // 2:
            l2[layers // 3] = math.inf
        grads = {c: [math.nan] * layers for c in GRAD_COLUMNS}
        grads.update(
            has_grad=[1.0] * layers,
            grad_l2=l2,
            grad_l1=[v * 10 for v in l2],
            param_norm=[10.0] * layers,
            update_norm=[v * 0.01 for v in l2],
            numel=[4096.0] * layers,
            grad_nonfinite=[0.0 if math.isfinite(v) else 1.0 for v in l2],
        )
        acts = {c: [math.nan] * layers for c in ACT_COLUMNS}
        acts.update(calls=[1.0] * layers, sum=[1.0] * layers, sampled=[100.0] * layers)
        history.append(
            StepRecord(step=step, loss=2.0 / (1 + step / 100), scale=None, grads=grads, acts=acts)
        )
    finding = Finding(
        kind="vanishing_gradient",
        layer=names[0],
        severity="error",
        step=0,
        message="synthetic",
        evidence={"layers": names[: layers // 3]},
    )
    return Report(findings=[finding], model_name=f"synthetic {layers}x{steps}", history=history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    report = synthetic_report(args.layers, args.steps)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        paths = report.plot(out)
        elapsed = time.perf_counter() - t0
    print(
        f"rendered {len(paths)} files for {args.layers} layers x {args.steps} steps "
        f"in {elapsed:.2f} s (target < 5 s)"
    )


if __name__ == "__main__":
    main()
