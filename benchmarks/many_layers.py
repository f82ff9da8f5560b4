"""A model of 1,000 small Linear layers: attach time, per-step ratio, report() and save_html().

Run:  python benchmarks/many_layers.py [--layers 1000] [--steps 400] [--width 8] [--tanh]
          [--out benchmarks/results/many_layers.json]

One thread.  The model is ``Sequential`` of ``layers`` Linear(width, width) layers
(``--tanh``: a Tanh after each, so twice the modules), trained with SGD on a seeded
random batch.  Each time is wall-clock and, in brackets, this process's CPU time
(the machine may be shared: CPU time is the steadier figure).
The plain loop and the watched loop alternate in blocks of 10 steps (one scope for the
whole run, attached only during its blocks, so each of the first 10 watched blocks holds
one detail step of the default cadence, and the later ones one in as many blocks as the
cost-paced cadence chooses, at most 5); the per-step ratio is the median over block pairs of
(watched block CPU time / plain block CPU time), and the mean ratio is the total
watched CPU time over the total plain CPU time (it includes the first, all-detail steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import gradscope


def build(layers: int, width: int, tanh: bool) -> nn.Sequential:
    torch.manual_seed(0)
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(width, width), nn.Tanh()] if tanh else [nn.Linear(width, width)]
    return nn.Sequential(*parts)


class Timer:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (CPU {self.cpu:.2f} s)"


def block(model, opt, x, y, steps: int, scope=None) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if scope is not None:
            scope.log_loss(loss)
        loss.backward()
        opt.step()
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400, help="watched steps (as many plain)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--tanh", action="store_true", help="a Tanh after each Linear")
    parser.add_argument("--out", default="benchmarks/results/many_layers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build(args.layers, args.width, args.tanh)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, args.width, generator=g)
    y = torch.randn(16, args.width, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    block(model, opt, x, y, 3)  # warm up

    with Timer() as attach:
        scope = gradscope.Scope(model, optimizer=opt)
        scope.attach()
    scope.detach()

    ratios, plain_total, watched_total = [], 0.0, 0.0
    per = 10
    for _ in range(max(1, args.steps // per)):
        plain = block(model, opt, x, y, per)
        scope.attach()
        watched = block(model, opt, x, y, per, scope)
        scope.detach()
        ratios.append(watched / plain)
        plain_total += plain
        watched_total += watched

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Timer() as judged:
            report = scope.report()
        with tempfile.TemporaryDirectory() as tmp, Timer() as html:
            report.save_html(Path(tmp) / "report.html")
    modules = len(list(model.children()))
    result = {
        "layers": args.layers,
        "modules": modules,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": len(ratios) * per,
        "plain_ms": 1e3 * plain_total / (len(ratios) * per),
        "attach_s": attach.wall,
        "ratio_median": statistics.median(ratios),
        "ratio_q1_q3": statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else None,
        "ratio_mean": watched_total / plain_total,
        "report_s": judged.wall,
        "report_cpu_s": judged.cpu,
        "save_html_s": html.wall,
        "save_html_cpu_s": html.cpu,
        "detail_interval": report.overhead.get("detail_interval"),
        "detail_steps": report.overhead.get("detail_steps"),
        "findings": [f.kind for f in report.findings],
        "recorded_steps": report.history.recorded,
    }
    print(f"model: {args.layers} x Linear({args.width},{args.width})"
          f"{' + Tanh' if args.tanh else ''}, {modules} modules, "
          f"{result['parameters']} parameters; plain step {result['plain_ms']:.1f} ms (CPU)")
    print(f"attach (Scope(...) + attach()): {attach}")
    print(f"per-step CPU-time ratio watched/plain: {result['ratio_median']:.2f}x median over "
          f"{len(ratios)} block pairs of {per} steps (min {min(ratios):.2f}x, max "
          f"{max(ratios):.2f}x); mean (total time) {result['ratio_mean']:.2f}x")
    if result["detail_steps"] is not None:
        print(f"detail steps: {result['detail_steps']:.0f}, last interval "
              f"{result['detail_interval']:.0f} recorded steps")
    print(f"report(): {judged} ({len(report.findings)} findings, "
          f"{report.history.recorded} recorded steps)")
    print(f"save_html(): {html}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
