"""Detection quality on generated scenarios, labeled by an independent oracle.

Run:  python benchmarks/generated_detection.py --part tuning|heldout [--start K] [--limit N]
          [--cadence watch|diagnose|both] [--jobs 1] [--out FILE.json]

``--start K`` skips the part's first K runs: a held-out draw nobody has looked at yet (the
README's figures use ``--part heldout --start 10320|10720|...|15920 --limit 400``;
held-out runs 0-25119 have been read or measured, so the next fresh draw starts at 25120).

Each run of the part (scenarios/generated/split.py) is drawn from the configuration space
(space.py), labeled by the oracle (oracle.py, plain torch, docs/definitions.md) and run
through gradscope: ``watch()`` with default settings around the scenario's own loop, and
``diagnose()`` where the scenario fits its signature.  A predicted kind is a finding of
severity warning or error.  Prints a markdown table per cadence (precision, recall, healthy
runs with an alarm, NaN culprit right, micro P/R), then every miss and false alarm with the
run's configuration, the oracle's numbers and what gradscope said.  The per-run results go
to the JSON file (default benchmarks/results/generated_<part>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from gradscope_scenarios.generated.oracle import KINDS
from gradscope_scenarios.generated.score import CADENCES, errors, evaluate, score
from gradscope_scenarios.generated.split import DEFAULT_SIZE, PARTS, seeds


def _fmt(x: float) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else f"{x:.2f}"


def table(summary: dict[str, Any]) -> str:
    """The markdown table of one cadence's score."""
    lines = [
        f"cadence `{summary['cadence']}`: {summary['runs']} runs, {summary['healthy']} healthy",
        "",
        "| kind | TP | FP | FN | precision | recall | layer right (of TP) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        k = summary["kinds"][kind]
        lines.append(
            f"| {kind} | {k['tp']} | {k['fp']} | {k['fn']} | {_fmt(k['precision'])} | "
            f"{_fmt(k['recall'])} | {_fmt(k['layer_right'])} |"
        )
    lines += [
        f"| micro | | | | {_fmt(summary['micro_precision'])} | {_fmt(summary['micro_recall'])} | |",
        "",
        f"healthy runs with a warning/error: {summary['healthy_with_alarms']} of "
        f"{summary['healthy']}; NaN culprit right: {summary['nan_culprit_right']} of "
        f"{summary['nan_culprit_runs']}; gradscope crashed on {summary['crashes']} runs",
    ]
    return "\n".join(lines)


def _said(found: list[dict[str, Any]] | None) -> str:
    if not found:
        return "nothing"
    return ", ".join(sorted({f"{f['kind']}@{f['layer']}" for f in found}))


def mistakes(results: list[dict[str, Any]], cadence: str) -> list[str]:
    """One line per miss / false alarm: id, config, oracle numbers, what gradscope said."""
    lines = []
    for r in results:
        for what, kind in errors(r, cadence):
            lab = r["label"]
            where = ",".join(lab["kinds"].get(kind, []))[:60]
            lines.append(
                f"- [{cadence}] seed {r['seed']} {what} {kind}"
                + (f" @{where}" if where else "")
                + f" | {r['short']} | oracle {json.dumps(lab['numbers'])}"
                + f" | gradscope: {_said(r[cadence])}"
            )
    return lines


def _init_worker() -> None:
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, default="tuning")
    parser.add_argument("--start", type=int, default=0, help="skip the part's first runs")
    parser.add_argument("--limit", type=int, default=DEFAULT_SIZE, help="runs of the part")
    parser.add_argument("--cadence", choices=(*CADENCES, "both"), default="both")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", default=None, help="per-run results JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cadences = CADENCES if args.cadence == "both" else (args.cadence,)
    run_seeds = seeds(args.part, args.start + args.limit)[args.start :]
    results: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{args.part} runs", total=len(run_seeds))
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, initializer=_init_worker) as pool:
                for r in pool.map(evaluate, run_seeds, [cadences] * len(run_seeds)):
                    results.append(r)
                    progress.advance(task)
        else:
            for s in run_seeds:
                results.append(evaluate(s, cadences))
                progress.advance(task)
    summaries = {c: score(results, c) for c in cadences}
    healthy = sum(not r["label"]["kinds"] for r in results)
    print(
        f"part {args.part} (runs {args.start}-{args.start + len(results) - 1}): "
        f"{len(results)} runs, {healthy} healthy by the oracle"
    )
    seconds = {
        k: statistics.median(r["seconds"][k] for r in results if k in r["seconds"])
        for k in ("oracle", *cadences)
    }
    print("median seconds per run: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    for c in cadences:
        print()
        print(table(summaries[c]))
    for c in cadences:
        lines = mistakes(results, c)
        print(f"\n{len(lines)} misses and false alarms ({c}):")
        print("\n".join(lines))
    out = Path(args.out or f"benchmarks/results/generated_{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "part": args.part,
                "start": args.start,
                "summaries": summaries,
                "seconds": seconds,
                "runs": results,
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
