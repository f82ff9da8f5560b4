"""Detection quality on the labeled scenario suite: gradscope vs two published rule sets.

Run:  python benchmarks/detection.py [--out benchmarks/results/detection.json]

For every scenario of scenarios/handwritten.py this trains the model three ways in one
process: under gradscope (as diagnose() does: every statistic on every step), under
gradscope's cheap default (``watch()`` with its default cadence), and under the rule
sets of AUTOTRAINER and DeepDiagnosis, implemented as their papers state them:

- AUTOTRAINER: vanishing when the first-to-last layer gradient-norm ratio < 1e-3 and
  the first layer's gradient norm < 1e-4; exploding when that ratio > 70 or NaN;
  dying ReLU when >= 70% of a layer's gradient entries are zero.
- DeepDiagnosis: vanishing when a layer's mean |dW| < 1e-7; dead when >= 70% of a
  ReLU's outputs are <= 0; saturated when > 50% of a sigmoid/tanh's inputs lie beyond
  +-5; NaN/Inf in the loss or weights as a numerical error.

A rule fires for a scenario when it holds on any training step.  Prints precision,
recall and F1 per finding kind, and the false alarms on the healthy scenarios.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from gradscope_scenarios.handwritten import KINDS, Scenario, suite, watched

RELU = (nn.ReLU, nn.ReLU6)
SQUASH = (nn.Sigmoid, nn.Tanh)


def _weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


def baseline_run(scenario: Scenario) -> dict[str, set[str]]:
    """Train with plain torch and apply both rule sets after every backward."""
    torch.manual_seed(0)
    model = scenario.build()
    optimizer = scenario.optimizer(model.parameters())
    fired = {"AUTOTRAINER": set(), "DeepDiagnosis": set()}
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, RELU + SQUASH):

            def hook(mod, args, out, name=name):
                outputs[name] = out.detach()
                inputs[name] = args[0].detach()

            handles.append(module.register_forward_hook(hook))

    def judge(loss: torch.Tensor) -> None:
        weights = [(n, p) for n, p in _weights(model) if p.grad is not None]
        if weights:
            first, last = weights[0][1].grad, weights[-1][1].grad
            g_first, g_last = float(first.norm()), float(last.norm())
            ratio = g_first / g_last if g_last > 0 else math.inf
            if ratio < 1e-3 and g_first < 1e-4:
                fired["AUTOTRAINER"].add("vanishing_gradient")
            if ratio > 70 or math.isnan(ratio) or not math.isfinite(g_first):
                fired["AUTOTRAINER"].add("exploding_gradient")
            for _, p in weights:
                if float((p.grad == 0).float().mean()) >= 0.7:
                    fired["AUTOTRAINER"].add("dead_relu")
                if float(p.grad.abs().mean()) < 1e-7:
                    fired["DeepDiagnosis"].add("vanishing_gradient")
        for name, out in outputs.items():
            module = dict(model.named_modules())[name]
            if isinstance(module, RELU) and float((out <= 0).float().mean()) >= 0.7:
                fired["DeepDiagnosis"].add("dead_relu")
            if isinstance(module, SQUASH) and float((inputs[name].abs() > 5).float().mean()) > 0.5:
                fired["DeepDiagnosis"].add("saturated_activation")
        nonfinite = not bool(torch.isfinite(loss).all()) or any(
            not bool(torch.isfinite(p).all()) for p in model.parameters()
        )
        if nonfinite:
            fired["DeepDiagnosis"].add("nonfinite_gradient")

    try:
        for step in range(scenario.steps):
            batch = scenario.batch(step)
            if scenario.step_fn is not None:
                loss = scenario.step_fn(model, batch, optimizer, None, [])
                judge(loss.detach())
                continue
            x, y = batch
            optimizer.zero_grad(set_to_none=True)
            loss = scenario.loss_fn(model(x), y)
            loss.backward()
            judge(loss.detach())
            if scenario.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), scenario.clip)
            optimizer.step()
    finally:
        for h in handles:
            h.remove()
    return fired


def gradscope_kinds(scenario: Scenario, detail_every: int | None) -> set[str]:
    """Finding kinds (warning or worse) gradscope reports for the scenario."""
    return watched(scenario, detail_every=detail_every).report.kinds_at_least("warning")


def score(predictions: dict[str, set[str]], scenarios: list[Scenario]) -> dict:
    table = {}
    for kind in KINDS:
        tp = fp = fn = 0
        for sc in scenarios:
            found = kind in predictions[sc.name]
            if kind in sc.expect:
                tp += found
                fn += not found
            elif found and kind not in sc.allow:
                fp += 1
        precision = tp / (tp + fp) if tp + fp else (1.0 if not fn else 0.0)
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[kind] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    healthy_alarms = sum(bool(predictions[sc.name] - sc.allow) for sc in scenarios if sc.healthy)
    return {
        "kinds": table,
        "healthy_with_alarms": healthy_alarms,
        "healthy": sum(sc.healthy for sc in scenarios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/detection.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenarios = suite()
    tools = {
        "gradscope": {},
        "gradscope default cadence": {},
        "AUTOTRAINER": {},
        "DeepDiagnosis": {},
    }
    for sc in scenarios:
        tools["gradscope"][sc.name] = gradscope_kinds(sc, detail_every=1)
        # watch()'s own default (detail_every=None: 1 in 10, paced by cost after 100 records)
        tools["gradscope default cadence"][sc.name] = gradscope_kinds(sc, detail_every=None)
        fired = baseline_run(sc)
        tools["AUTOTRAINER"][sc.name] = fired["AUTOTRAINER"]
        tools["DeepDiagnosis"][sc.name] = fired["DeepDiagnosis"]
        print(
            f"{sc.name:30s} expect={sorted(sc.expect) or '-'} "
            f"gradscope={sorted(tools['gradscope'][sc.name]) or '-'}",
            flush=True,
        )
    results = {name: score(pred, scenarios) for name, pred in tools.items()}
    print()
    print(f"{len(scenarios)} scenarios, {results['gradscope']['healthy']} healthy")
    print("| kind | " + " | ".join(f"{t} P / R / F1" for t in tools) + " |")
    print("| --- | " + " | ".join("---" for _ in tools) + " |")
    for kind in KINDS:
        cells = []
        for name in tools:
            k = results[name]["kinds"][kind]
            cells.append(f"{k['precision']:.2f} / {k['recall']:.2f} / {k['f1']:.2f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(
        "| healthy scenarios with an alarm | "
        + " | ".join(
            f"{results[n]['healthy_with_alarms']} of {results[n]['healthy']}" for n in tools
        )
        + " |"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "results": results,
                "predictions": {t: {k: sorted(v) for k, v in p.items()} for t, p in tools.items()},
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
