"""How often does trial() find a fix that helps, and does the top suggestion help?

For every faulty reference twin (``gradscope models``) and every faulty scenario of
``gradscope_scenarios.handwritten``: train and diagnose it, then run
:func:`gradscope.trial` on the same model, batches and optimizer.  Two shares:

- *trial's first result helps*: the best result trial ranks first has verdict ``helps``;
- *first suggestion verified*: ``finding.suggestions[0]`` of the case's main finding
  (the kind the case is labelled with) gets verdict ``helps`` from trial.

Fixes that need a code change (loss numerics, graph, GAN loss) are applied as the
code change the suite pairs them with (``Scenario.fixes``), passed through
``trial(code_changes=...)``; the shares without them are printed too (such a fix is
then "needs a code change", never "helps").

    python benchmarks/trial.py            # all cases, about 2-4 minutes on one thread
    python benchmarks/trial.py --only log_of_zero,exploding_rnn
    python benchmarks/trial.py --seed 1 --out /tmp/trial_seed1.json  # another seed
    python benchmarks/trial.py --generated 80 --out benchmarks/results/trial_generated.json
    python benchmarks/trial.py --generated 80 --source tuning.json --out trial_tuning.json
    python benchmarks/trial.py --generated 80 --extend 1   # one round only (no longer round)

``--generated N`` runs the generated suite instead: the first N faulty runs of the
held-out draw in ``benchmarks/results/generated_heldout.json`` that ``diagnose`` fits and
in which gradscope found a kind the oracle labels (trial needs a finding to try fixes
for).  ``--source FILE`` reads the runs from another results file of
``benchmarks/generated_detection.py`` written with ``--cadence both`` (or ``diagnose``),
such as the tuning part, to develop on while the held-out draw stays unseen.  The model,
batches, loss and optimizer are the scenario's own, the main finding is the first
labelled kind gradscope found, and the code changes are the generated suite's own edits
for its unsafe operation and its detached branch (``_generated_code_changes``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import gradscope
from gradscope.demo import train_spec
from gradscope.models.training import supervised_step
from gradscope.reference import available_specs
from gradscope.trials.fixes import CODE_CHANGE_KINDS, CodeChange
from gradscope.trials.session import EXTEND
from gradscope_scenarios import handwritten as H

RESULTS = Path(__file__).parent / "results" / "trial.json"


def _step_of(step_fn: Callable | None) -> Callable | None:
    if step_fn is None:
        return None
    return lambda model, batch, optimizer, scope: step_fn(model, batch, optimizer, scope, [])


def _code_changes(scenario: H.Scenario | None) -> dict[str, Callable]:
    """The suite's own code change for each fix kind that needs one."""
    if scenario is None:
        return {}
    changes = {}
    for kind, transform in scenario.fixes.items():

        def change(
            copy: torch.nn.Module, transform: Callable = transform, kind: str = kind
        ) -> CodeChange:
            fixed = transform(scenario)
            model = None
            if fixed.build is not scenario.build:
                torch.manual_seed(0)
                model = fixed.build()
            step = None
            if fixed.step_fn is not scenario.step_fn:  # a loop of its own, or the usual one
                step = _step_of(fixed.step_fn) or supervised_step(fixed.loss_fn)
            loss_fn = fixed.loss_fn if fixed.loss_fn is not scenario.loss_fn else None
            return CodeChange(
                model=model, loss_fn=loss_fn, train_step=step, description=f"the suite's {kind}"
            )

        changes[kind] = change
    return changes


def _twin_case(name: str, spec: Any) -> dict[str, Any]:
    steps = spec.demo_steps
    report = train_spec(spec, steps)
    torch.manual_seed(0)
    model = spec.factory()
    batches = [spec.example_batch(seed=k) for k in range(min(steps, spec.distinct_batches))]
    return {
        "name": name,
        "source": "twin",
        "kind": spec.problem,
        "model": model,
        "batches": batches,
        "loss_fn": spec.loss_fn,
        "report": report,
        "steps": steps,
        "train_step": spec.step,
        "code_changes": _code_changes(H.SCEN.get(name)),
    }


def _scenario_case(scenario: H.Scenario) -> dict[str, Any]:
    report = H.watched(scenario).report
    torch.manual_seed(0)
    model = scenario.build()
    return {
        "name": scenario.name,
        "source": "scenario",
        "kind": sorted(scenario.expect)[0],
        "model": model,
        "batches": [scenario.batch(k) for k in range(scenario.steps)],
        "loss_fn": scenario.loss_fn,
        "report": report,
        "steps": scenario.steps,
        "train_step": _step_of(scenario.step_fn),
        "code_changes": _code_changes(scenario),
    }


GENERATED = Path(__file__).parent / "results" / "generated_heldout.json"


def _generated_code_changes(config: Any) -> dict[str, Callable]:
    """The generated suite's own edits for the fixes that need a code change, made as the
    printed snippets say: the unsafe operation in its safe form, the detached branch
    attached again (like the hand-written suite's ``fixes``)."""
    from gradscope_scenarios.generated.models import SAFE

    changes: dict[str, Callable] = {}
    if config.unsafe != "none":

        def safe(copy: torch.nn.Module, unsafe: str = config.unsafe) -> torch.nn.Module:
            copy.unsafe = SAFE[unsafe]()
            return copy

        changes["fix_loss_numerics"] = safe
    if config.param_fault == "detached":

        def attach(copy: torch.nn.Module) -> torch.nn.Module:
            copy.detach_side = False
            return copy

        changes["check_graph"] = attach
    return changes


def _generated_case(run: dict[str, Any], kind: str) -> dict[str, Any]:
    from gradscope_scenarios.generated.space import Config, build

    config = Config(**run["config"])
    model, batches, loss_fn, optimizer = build(config).diagnose_args()
    report = gradscope.diagnose(model, batches, loss_fn, optimizer=optimizer, steps=config.steps)
    model, batches, loss_fn, _ = build(config).diagnose_args()  # fresh weights for the trial
    return {
        "name": f"seed {run['seed']}",
        "source": "generated",
        "kind": kind,
        "model": model,
        "batches": batches,
        "loss_fn": loss_fn,
        "report": report,
        "steps": config.steps,
        "train_step": None,
        "code_changes": _generated_code_changes(config),
        "config": run["short"],
    }


def generated_cases(
    limit: int, source: Path = GENERATED, only: set[str] | None = None
) -> list[Callable[[], dict[str, Any]]]:
    """Deferred builders for the first ``limit`` faulty runs of ``source`` (a results file
    of benchmarks/generated_detection.py with ``diagnose`` findings) that ``diagnose``
    caught; with ``only``, those of them named there (``"seed 2116"``)."""
    from gradscope_scenarios.generated.oracle import KINDS

    runs = json.loads(Path(source).read_text())["runs"]
    if not any("diagnose" in run for run in runs):
        raise SystemExit(
            f"{source} holds no diagnose findings: write it with "
            "benchmarks/generated_detection.py --cadence both (or diagnose)"
        )
    builders: list[Callable[[], dict[str, Any]]] = []
    names: list[str] = []
    for run in runs:
        found = {f["kind"] for f in run.get("diagnose") or []}
        caught = [k for k in KINDS if k in run["label"]["kinds"] and k in found]
        if caught and len(builders) < limit:
            builders.append(lambda run=run, kind=caught[0]: _generated_case(run, kind))
            names.append(f"seed {run['seed']}")
    if only:
        builders = [b for b, name in zip(builders, names, strict=True) if name in only]
    return builders


def cases(only: set[str] | None) -> list[Callable[[], dict[str, Any]]]:
    """Deferred builders, one per case (twins first)."""
    builders: list[Callable[[], dict[str, Any]]] = []
    for name, spec in sorted(available_specs().items()):
        if spec.fixed_by and (not only or name in only):
            builders.append(lambda name=name, spec=spec: _twin_case(name, spec))
    for scenario in H.suite():
        if scenario.expect and (not only or scenario.name in only):
            builders.append(lambda scenario=scenario: _scenario_case(scenario))
    return builders


def measure(case: dict[str, Any], seed: int = 0, extend: int = EXTEND) -> dict[str, Any]:
    """Run trial (with torch seed ``seed``, a longer round ``extend`` x as long when no fix
    helps) on one case and score it."""
    report: gradscope.Report = case["report"]
    start = time.perf_counter()
    result = gradscope.trial(
        case["model"],
        case["batches"],
        case["loss_fn"],
        report,
        steps=case["steps"],
        seed=seed,
        train_step=case["train_step"],
        code_changes=case["code_changes"],
        extend=extend,
    )
    seconds = time.perf_counter() - start
    main = next((f for f in report.findings if f.kind == case["kind"]), None)
    first = main.suggestions[0] if main is not None and main.suggestions else None
    verified = result.result_for(main, first.kind) if first is not None else None
    coded = [r for r in result.results if r.kind in CODE_CHANGE_KINDS]
    plain = [r for r in result.results if r.kind not in CODE_CHANGE_KINDS]
    return {
        "name": case["name"],
        "source": case["source"],
        "config": case.get("config"),
        "finding": f"{case['kind']}@{main.layer if main else '-'}" if main else "not found",
        "first_suggestion": first.kind if first else None,
        "first_suggestion_verdict": verified.verdict if verified else "no finding",
        "first_suggestion_reason": verified.reason if verified else "",
        "first_suggestion_needs_code": bool(first and first.kind in CODE_CHANGE_KINDS),
        "trial_first": result.results[0].kind if result.results else None,
        "trial_first_verdict": result.results[0].verdict if result.results else "nothing",
        "trial_first_verdict_without_code_changes": (plain[0].verdict if plain else "nothing"),
        "code_change_results": len(coded),
        "variants": len(result.results),
        "extended_from": result.extended_from,
        "cost": result.cost,
        "seconds": seconds,
        # The trial without its loss curves (they make the file 30x larger).
        "trial": _without_curves(result.to_dict()),
    }


def _without_curves(data: dict[str, Any]) -> dict[str, Any]:
    data["baseline"].pop("losses", None)
    for result in data["results"]:
        result.pop("losses", None)
    return data


def _share(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> str:
    hits = sum(bool(test(r)) for r in rows)
    return f"{hits}/{len(rows)} ({hits / len(rows):.0%})" if rows else "-"


def main() -> None:
    """Run every case, print a markdown table, write benchmarks/results/trial.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help='comma-separated case names (generated runs: "seed 2116,seed 2401")'
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--seed", type=int, default=0, help="the trial's seed (not the report's)")
    parser.add_argument(
        "--extend",
        type=int,
        default=EXTEND,
        help="trial's extend: the longer round's length in first rounds (1: one round only)",
    )
    parser.add_argument(
        "--generated", type=int, default=0, help="N faulty generated runs instead of the suite"
    )
    parser.add_argument(
        "--source",
        default=str(GENERATED),
        help="with --generated: the generated_detection results file to read the runs from "
        "(default: the held-out draw)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None
    from rich.progress import Progress

    rows = []
    builders = (
        generated_cases(args.generated, Path(args.source), only) if args.generated else cases(only)
    )
    with Progress(transient=True) as bar:
        task = bar.add_task("trials", total=len(builders))
        for build in builders:
            rows.append(measure(build(), args.seed, args.extend))
            bar.advance(task)
    print(
        "| case | main finding | first suggestion | its verdict | trial's first | verdict | cost |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        needs = " (code change)" if r["first_suggestion_needs_code"] else ""
        cost = f"{r['cost']:.1f}x" if r["cost"] is not None else "-"
        print(
            f"| {r['source']} {r['name']} | {r['finding']} | {r['first_suggestion']}{needs} | "
            f"{r['first_suggestion_verdict']} | {r['trial_first']} | "
            f"{r['trial_first_verdict']} | {cost} |"
        )
    summary = {
        "trial_first_helps": _share(rows, lambda r: r["trial_first_verdict"] == "helps"),
        "first_suggestion_helps": _share(rows, lambda r: r["first_suggestion_verdict"] == "helps"),
        "without_code_changes": {
            "trial_first_helps": _share(
                rows, lambda r: r["trial_first_verdict_without_code_changes"] == "helps"
            ),
            "first_suggestion_helps": _share(
                rows,
                lambda r: (
                    r["first_suggestion_verdict"] == "helps"
                    and not r["first_suggestion_needs_code"]
                ),
            ),
        },
        "cost_median": sorted(r["cost"] for r in rows if r["cost"] is not None)[
            len([r for r in rows if r["cost"] is not None]) // 2
        ]
        if any(r["cost"] is not None for r in rows)
        else None,
        "seed": args.seed,
        "extend": args.extend,
        "extended": sum(r["extended_from"] is not None for r in rows),
        "source": args.source if args.generated else None,
        "torch": torch.__version__,
        "threads": 1,
    }
    print()
    print(f"trial's first result helps: {summary['trial_first_helps']}")
    print(f"first suggestion verified as helping: {summary['first_suggestion_helps']}")
    wo = summary["without_code_changes"]
    print(
        "without the suite's code changes: trial's first helps "
        f"{wo['trial_first_helps']}, first suggestion helps {wo['first_suggestion_helps']}"
    )
    print(f"median cost (all variants / one baseline run): {summary['cost_median']:.1f}x")
    print(f"trained again for longer (no fix helped in the first round): {summary['extended']}")
    failing = [r for r in rows if r["first_suggestion_verdict"] != "helps"]
    for r in failing:
        print(
            f"first suggestion fails: {r['name']} {r['finding']} {r['first_suggestion']}: "
            f"{r['first_suggestion_verdict']} ({r['first_suggestion_reason']})"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "cases": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
