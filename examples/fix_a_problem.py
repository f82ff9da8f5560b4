"""From a finding to a fix: a deep sigmoid MLP, what gradscope says, its fix applied.

Run:  python examples/fix_a_problem.py [--out DIR]

1. train the deep sigmoid MLP of the seed notes for 60 steps: the loss stays flat;
2. gradscope names the layer where gradients vanish and suggests fixes with code;
3. the top two suggested snippets are executed on a fresh model, exactly as printed;
4. the same training now lowers the loss.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradscope
from gradscope.models import builtin_specs

STEPS = 60


def train(model: nn.Module, spec, scope_out: list | None = None) -> list[float]:
    """Train with SGD(0.05) on the spec's data; returns the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with gradscope.watch(model, optimizer=optimizer) as scope:
        for step in range(STEPS):
            x, y = spec.example_batch(64, seed=step % 8)
            optimizer.zero_grad()
            loss = spec.loss_fn(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    if scope_out is not None:
        scope_out.append(scope.report())
    return losses


def main(argv: list[str] | None = None) -> gradscope.Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also save the plots here")
    args = parser.parse_args(argv)
    spec = builtin_specs()["deep_sigmoid_mlp"]

    torch.manual_seed(0)
    reports: list[gradscope.Report] = []
    before = train(spec.factory(), spec, reports)
    report = reports[0]
    print(report)
    finding = report.findings[0]
    fixes = finding.suggestions[:2]

    torch.manual_seed(0)
    model = spec.factory()
    namespace = {"model": model, "torch": torch, "nn": nn}
    for fix in fixes:
        print(f"\napplying {fix.kind}:\n{fix.code}")
        exec(fix.code, namespace)  # noqa: S102 - the example runs the printed snippet
    after = train(namespace["model"], spec)

    def tail(losses: list[float]) -> float:
        return sum(losses[-10:]) / 10

    print(f"\nloss before the fix: {before[0]:.3f} -> {tail(before):.3f}")
    print(f"loss after the fix:  {after[0]:.3f} -> {tail(after):.3f}")
    assert tail(after) < tail(before), "the suggested fix should make the loss fall"
    if args.out:
        for path in report.plot(args.out):
            print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
