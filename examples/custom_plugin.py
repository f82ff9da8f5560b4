"""A third-party detector in 20 lines: flag a loss that rose above where it started.

Run:  python examples/custom_plugin.py

In a package, register it for everyone with an entry point instead:
    [project.entry-points.gradscope]
    loss_rise = "my_package.loss_rise"
"""

from __future__ import annotations

import argparse

import torch

import gradscope
from gradscope.signals import loss_trend


class LossRise:
    """Warns when the loss at the end of the run is higher than at the start."""

    @gradscope.hookimpl
    def gradscope_detect(self, history, model_info, config):
        trend = loss_trend(history)
        if not trend.known or trend.last <= trend.first:
            return []
        return [
            gradscope.Finding(
                kind="loss_rise",
                layer=None,
                severity="warning",
                step=history.steps[-1],
                message=f"The loss rose from {trend.first:.3g} to {trend.last:.3g}.",
                evidence={"first": trend.first, "last": trend.last},
            )
        ]


def main(argv: list[str] | None = None) -> gradscope.Report:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_known_args(argv)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with gradscope.plugins.registered(LossRise(), name="loss_rise"):
        # lr=3 overshoots on every step: the loss climbs
        report = gradscope.diagnose(model, (x, y), torch.nn.functional.mse_loss, steps=10, lr=3.0)
    print(report)
    assert "loss_rise" in report.kinds()
    return report


if __name__ == "__main__":
    main()
