"""Record the tuning part's runs once, then judge them again after every change to a detector.

Run:  python benchmarks/tuning.py collect --dir DIR [--start K] [--limit N] [--jobs 2]
      python benchmarks/tuning.py judge --dir DIR [--kind KIND] [--show] [--set plugin.key=value]

``collect`` draws runs of the *tuning* part (scenarios/generated/split.py), labels each with
the oracle (plain torch) and saves, per run, the label and the reports of ``watch()`` (one
per GAN player) and ``diagnose()`` with everything re-judging needs (``Report.to_json``), one
gzipped JSON file per run.  It skips runs already in DIR, so it can be stopped and resumed
and grown.  About 1.5 s of CPU per run; the files take about 40 kB each.

``judge`` judges every saved report again with the installed detectors
(``gradscope.judge.rejudge``; ``--set`` lays threshold overrides over them, as
``gradscope report RUN.json --set`` does) and prints the same tables and the same list of
misses and false alarms as benchmarks/generated_detection.py.  A detector change is
checked against thousands of runs in minutes without training anything again.

Only the tuning part is recorded: thresholds are set here, and the held-out part is
measured once per fresh draw by generated_detection.py, never tuned on.  The recorded runs
are a cache of the project's own files, not kept in the repository: ``collect`` makes them
again from the same seeds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from generated_detection import mistakes, table
from rich.progress import Progress

from gradscope.config import parse_overrides
from gradscope.judge import rejudge
from gradscope.report import Report
from gradscope_scenarios.generated.oracle import KINDS, label
from gradscope_scenarios.generated.score import (
    CADENCES,
    _findings,
    diagnose_report,
    score,
    watch_findings,
    watch_reports,
)
from gradscope_scenarios.generated.space import draw
from gradscope_scenarios.generated.split import seeds


def _map(fn: Any, work: list, jobs: int, label: str, chunksize: int) -> list:
    """``fn`` over ``work`` in order, in ``jobs`` worker processes (one thread each), with a
    progress bar."""
    out = []
    with Progress() as progress:
        task = progress.add_task(label, total=len(work))
        if jobs > 1:
            with ProcessPoolExecutor(
                jobs, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                for result in pool.map(fn, work, chunksize=chunksize):
                    out.append(result)
                    progress.advance(task)
        else:
            for item in work:
                out.append(fn(item))
                progress.advance(task)
    return out


def _path(directory: Path, seed: int) -> Path:
    return directory / f"run_{seed:06d}.json.gz"


def record(seed: int) -> dict[str, Any]:
    """Label run ``seed`` with the oracle and keep its gradscope reports as JSON text."""
    torch.set_num_threads(1)
    config = draw(seed)
    out: dict[str, Any] = {
        "seed": seed,
        "config": config.to_dict(),
        "short": config.short(),
        "label": label(config).to_dict(),
        "reports": {},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cadence in CADENCES:
            try:
                if cadence == "watch":
                    reports = watch_reports(config)
                    out["reports"]["watch"] = {
                        p: r.to_json(indent=None) for p, r in reports.items()
                    }
                else:
                    report = diagnose_report(config)
                    out["reports"]["diagnose"] = (
                        None if report is None else report.to_json(indent=None)
                    )
            except Exception as exc:  # a crash in gradscope is a result too
                out[f"{cadence}_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _collect_one(args: tuple[int, str]) -> int:
    seed, directory = args
    path = _path(Path(directory), seed)
    data = json.dumps(record(seed)).encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(data))
    tmp.replace(path)
    return seed


def collect(directory: Path, start: int, limit: int, jobs: int) -> int:
    """Record the tuning runs ``start .. start+limit-1`` not yet in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds("tuning", start + limit)[start:] if not _path(directory, s).exists()]
    t0 = time.perf_counter()
    work = [(s, str(directory)) for s in todo]
    _map(_collect_one, work, jobs, "recording tuning runs", chunksize=4)
    print(f"recorded {len(todo)} runs in {time.perf_counter() - t0:.0f} s into {directory}")
    return 0


def _rejudged(text: str, overrides: dict[str, dict[str, Any]]) -> Report:
    return rejudge(Report.from_json(text), overrides)


def judged(path: Path, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One recorded run, its reports judged again: a result as generated_detection makes."""
    saved = json.loads(gzip.decompress(path.read_bytes()))
    result = {k: saved[k] for k in ("seed", "config", "short", "label")}
    reports = saved["reports"]
    for cadence in CADENCES:
        if f"{cadence}_error" in saved:
            result[cadence] = None
            result[f"{cadence}_error"] = saved[f"{cadence}_error"]
            continue
        try:
            if cadence == "watch":
                parts = {p: _rejudged(t, overrides) for p, t in reports["watch"].items()}
                result["watch"] = watch_findings(parts)
            else:
                text = reports.get("diagnose")
                result["diagnose"] = (
                    None if text is None else _findings(_rejudged(text, overrides), "model")
                )
        except Exception as exc:
            result[cadence] = None
            result[f"{cadence}_error"] = f"{type(exc).__name__}: {exc}"
    return result


def _judge_one(args: tuple[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    path, overrides = args
    return judged(Path(path), overrides)


def judge_all(
    directory: Path, overrides: dict[str, dict[str, Any]], kind: str | None, show: bool, jobs: int
) -> int:
    """Judge every recorded run again; print the tables and the misses and false alarms."""
    paths = sorted(directory.glob("run_*.json.gz"))
    if not paths:
        raise SystemExit(
            f"No recorded runs in {directory}: run `tuning.py collect --dir {directory}` first."
        )
    work = [(str(p), overrides) for p in paths]
    results = _map(_judge_one, work, jobs, "judging recorded runs", chunksize=16)
    healthy = sum(not r["label"]["kinds"] for r in results)
    print(f"{len(results)} recorded tuning runs, {healthy} healthy by the oracle")
    for cadence in CADENCES:
        print()
        print(table(score(results, cadence)))
    if show or kind:
        for cadence in CADENCES:
            lines = [
                line for line in mistakes(results, cadence) if kind is None or f" {kind}" in line
            ]
            print(
                f"\n{len(lines)} misses and false alarms ({cadence}{', ' + kind if kind else ''}):"
            )
            print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("collect", help="record tuning runs (label + reports) into DIR")
    rec.add_argument("--dir", required=True, type=Path)
    rec.add_argument("--start", type=int, default=0, help="skip the part's first runs")
    rec.add_argument("--limit", type=int, default=1000, help="runs of the part to record")
    rec.add_argument("--jobs", type=int, default=1, help="worker processes")
    jud = sub.add_parser("judge", help="judge the recorded runs again with the installed detectors")
    jud.add_argument("--dir", required=True, type=Path)
    jud.add_argument("--kind", choices=KINDS, default=None, help="list this kind's mistakes")
    jud.add_argument("--show", action="store_true", help="list every miss and false alarm")
    jud.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="PLUGIN.KEY=VALUE"
    )
    jud.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "collect":
        return collect(args.dir, args.start, args.limit, args.jobs)
    overrides = parse_overrides(args.assignments)
    return judge_all(args.dir, overrides, args.kind, args.show, args.jobs)


if __name__ == "__main__":
    raise SystemExit(main())
