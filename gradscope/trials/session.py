"""trial(): train every suggested fix on a copy of the user's model and judge it again."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from gradscope.diagnosis import _call, _pair
from gradscope.errors import InputError
from gradscope.findings import Finding, Suggestion
from gradscope.report import Report
from gradscope.trials import fixes as F
from gradscope.trials import runner
from gradscope.trials import verdict as V
from gradscope.trials.report import TrialReport, TrialResult, rank_results

#: How many times longer the second round is when no fix helps in the first.
EXTEND = 4


def _batches(batches: Any, steps: int) -> tuple[list[tuple[Any, Any]], Iterator[Any]]:
    """The batches every run reuses (one pair, or the first ``steps`` of an iterable) and
    the iterator the rest would come from (a longer round takes more from it only when
    it runs: a data loader's batches are not all held in memory up front)."""
    if isinstance(batches, tuple) and len(batches) == 2 and not isinstance(batches[0], tuple):
        return [batches], iter(())
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise InputError(
            "batches must be an (input, target) pair or an iterable of such pairs, "
            f"got {type(batches).__name__}."
        )
    rest = iter(batches)
    kept = [_pair(b) for b in itertools.islice(rest, steps)]
    if not kept:
        raise InputError("batches is empty: give at least one (input, target) pair.")
    return kept, rest


def _undecided(out: TrialReport) -> bool:
    """True when a longer round could change the outcome: no fix helps, the baseline's
    loss stayed finite and some trained fix's did too (a run that turned non-finite
    within ``steps`` turns non-finite again on the same batches)."""
    finite = [r for r in out.results if r.losses and all(math.isfinite(v) for v in r.losses)]
    baseline_finite = all(math.isfinite(v) for v in out.baseline_losses)
    return out.best is None and baseline_finite and bool(finite)


def _key_names(keys: set[V.Key]) -> list[str]:
    return sorted(f"{kind}@{layer if layer is not None else '-'}" for kind, layer in keys)


def trial(
    model: nn.Module,
    batches: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    report: Report,
    *,
    steps: int = 50,
    optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    seed: int = 0,
    train_step: runner.TrainStep | None = None,
    code_changes: dict[str, Callable[[nn.Module], nn.Module | F.CodeChange]] | None = None,
    extend: int = EXTEND,
    progress: Progress | None = None,
) -> TrialReport:
    """Try each suggested fix of ``report``'s warning/error findings on a copy of ``model``.

    A baseline (an unchanged copy) and one variant per applicable suggestion are trained
    for ``steps`` steps each under :func:`gradscope.watch`, with the same seed, batches
    in the same order and the same optimizer settings, and then judged again.  The
    user's model, its optimizer and the global random state are left as they were.

    Args:
        model: the model the report is about (never modified).
        batches: an (input, target) pair, or an iterable of pairs (the first ``steps``
            are kept and reused, in order, for every run).
        loss_fn: ``loss_fn(output, target)``; may be None with ``train_step``.
        report: the report whose findings' suggestions are tried.
        steps: training steps per run.
        optimizer_factory: ``optimizer_factory(params)`` builds each run's optimizer;
            by default the class and param-group hyper-parameters the report was made
            with (``report.model_info.optimizer_settings``), else SGD(lr=0.01).
        seed: the torch seed of every run.
        train_step: ``train_step(model, (x, y), optimizer, scope) -> loss`` for loops that
            are not a plain supervised step (a GAN); it must call ``optimizer.step()``.
        code_changes: ``{suggestion kind: fn}`` for fixes that need a code change (loss
            numerics, the graph, the GAN loss): ``fn(copy)`` returns the changed model or
            a :class:`~gradscope.trials.fixes.CodeChange` (model, loss_fn, train_step),
            and the trial verifies it like any other fix.  Without one, such fixes are
            listed as "needs a code change" with their snippet, and not trained.
        extend: when no fix helps after ``steps`` steps, the baseline and every fix are
            trained again for ``steps * extend`` steps (a fix such as a better
            initialisation often needs longer to show); 1 turns this off.
        progress: ``progress(done, total, label)`` before each run of a round (``done``
            runs of ``total`` finished; ``label`` names the run about to train), for a
            progress bar.

    Returns:
        A :class:`TrialReport` with the results best first.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"trial() needs a torch.nn.Module, got {type(model).__name__}.")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    if extend < 1:
        raise InputError(f"extend must be at least 1 (1 turns the longer round off), got {extend}.")
    if loss_fn is None and train_step is None:
        raise InputError("trial() needs loss_fn (or a train_step that computes the loss).")
    findings = report.at_least("warning")
    out = TrialReport(steps=steps, seed=seed, model_name=report.model_name)
    if not findings:
        out.notes.append("nothing to fix: the report has no warning or error finding")
        return out
    data, rest = _batches(batches, steps)
    with torch.random.fork_rng(devices=[]):
        session = _Session(model, data, loss_fn, report, out, train_step, code_changes or {})
        session.progress = progress
        if optimizer_factory is not None:
            session.factory = optimizer_factory
        session.run_all(findings)
        if extend > 1 and _undecided(out):
            out.extended_from = steps
            out.notes.append(
                f"no fix helped clearly after {steps} steps: the baseline and every fix "
                f"were trained again for {steps * extend} steps"
            )
            out.steps = steps * extend
            if len(data) == steps:  # an iterable that may hold more: the next batches
                data += [_pair(b) for b in itertools.islice(rest, steps * (extend - 1))]
            session.run_all(findings)
    return out


Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
#: ``progress(done, total, label)``: runs finished of the round's total, the next run's name.
Progress = Callable[[int, int, str], None]
CodeChanges = dict[str, Callable[[nn.Module], "nn.Module | F.CodeChange"]]


class _Session:
    """One trial: the baseline, then each suggestion on its own copy, judged against it."""

    def __init__(
        self,
        model: nn.Module,
        data: list[tuple[Any, Any]],
        loss_fn: Callable[[Any, Any], torch.Tensor] | None,
        report: Report,
        out: TrialReport,
        train_step: runner.TrainStep | None,
        code_changes: CodeChanges,
    ) -> None:
        self.model, self.data, self.loss_fn, self.report, self.out = (
            model,
            data,
            loss_fn,
            report,
            out,
        )
        self.train_step, self.code_changes = train_step, code_changes
        info = report.model_info
        self.settings = info.optimizer_settings if info is not None else {}
        self.factory: Factory | None = None
        #: id(parameter) -> optimizer group of the copy being trained, taken before its fix.
        self.group_of: dict[int, int] = {}
        self.cache: dict[tuple[str, tuple[str, ...], str], tuple[runner.Run, F.Change]] = {}
        self.spent = 0.0
        self.best_run: tuple[float, int, nn.Module] | None = None
        self.progress: Progress | None = None
        #: Rounds started (a second, longer one when no fix helped in the first).
        self.rounds = 0
        #: Notes on this round's baseline (a finding it did not show): a longer round's
        #: baseline replaces them.
        self.round_notes: list[str] = []
        self.order = {name: k for k, (name, _) in enumerate(model.named_modules())}

    def make_optimizer(self, variant: nn.Module) -> torch.optim.Optimizer:
        """The run's optimizer: the user's factory, else the report's settings."""
        if self.factory is not None:
            return self.factory([p for p in variant.parameters() if p.requires_grad])
        return runner.default_optimizer(self.settings, variant, self.group_of)

    def train(self, variant: nn.Module, change: F.Change | None, name: str) -> runner.Run:
        """Train one copy with the trial's data, seed and optimizer."""
        out = self.out
        return runner.train(
            variant,
            change,
            self.data,
            self.loss_fn,
            self.make_optimizer,
            out.steps,
            out.seed,
            self.train_step,
            name,
        )

    def copy(self) -> nn.Module:
        """A fresh copy of the user's model, its parameters mapped to optimizer groups."""
        try:
            variant = F.copy_model(self.model)
        except Exception as exc:  # noqa: BLE001 - deepcopy fails on some wrapped models
            raise InputError(
                f"trial() trains copies of the model, and this one cannot be copied: {exc}"
            ) from exc
        self.group_of.clear()
        self.group_of.update(runner.group_map(self.settings, variant))
        return variant

    def run_all(self, findings: list[Finding]) -> None:
        """The baseline, then every suggestion of every finding; results ranked in ``out``.

        Called again for a longer round: the runs start afresh, and the time of every run
        after the first baseline counts toward ``out.cost``.
        """
        out = self.out
        first_round = self.rounds == 0
        self.rounds += 1
        if first_round and self.factory is None and not self.settings:
            out.notes.append("the report does not name its optimizer: every run uses SGD(lr=0.01)")
        if first_round:
            self.probe = F.probe(self.model, self.data[0][0], _call)
        self.cache.clear()
        self.best_run = None
        total = 1 + sum(len(f.suggestions) for f in findings)
        self._tick(0, total, f"baseline, {out.steps} steps")
        torch.manual_seed(out.seed)
        self.baseline = self.train(self.copy(), None, f"{out.model_name} (baseline)")
        if first_round:
            out.baseline_seconds = self.baseline.seconds
        else:
            self.spent += self.baseline.seconds
        out.baseline_losses = self.baseline.losses
        out.margin = V.margin(self.baseline.losses)
        self.base_keys = V.finding_keys(self.baseline.report.findings, {})
        out.baseline_findings = _key_names(self.base_keys)
        out.notes = [note for note in out.notes if note not in self.round_notes]
        self.round_notes = [
            f"{finding.kind} in {finding.layer or '-'} did not show in the baseline's "
            f"{out.steps} steps: its fixes can lower the loss but not remove it"
            for finding in findings
            if (finding.kind, finding.layer) not in self.base_keys
        ]
        out.notes += self.round_notes
        results = []
        for finding in findings:
            for suggestion in finding.suggestions:
                self._tick(1 + len(results), total, f"{suggestion.kind} for {finding.kind}")
                results.append(self.attempt(finding, suggestion))
        self._tick(total, total, "done")
        out.results = rank_results(results)
        base_time = out.baseline_seconds
        out.cost = self.spent / base_time if self.spent and base_time > 0 else None
        best = out.best
        out.best_model = None
        if best is not None and self.best_run is not None and self.best_run[1] == id(best):
            out.best_model = self.best_run[2]
        needs = sorted({r.kind for r in results if r.needs_code_change})
        note = f"needs a code change, not trained: {', '.join(needs)}"
        if needs and note not in out.notes:
            out.notes.append(note)

    def _tick(self, done: int, total: int, label: str) -> None:
        if self.progress is not None:
            self.progress(done, total, label)

    def apply(
        self, finding: Finding, suggestion: Suggestion, result: TrialResult
    ) -> F.Change | None:
        """The suggestion applied to a fresh copy; None (reason in ``result``) if it cannot be."""
        ctx = F.FixContext(
            finding,
            suggestion,
            self.report,
            [x for x, _ in self.data],
            self.probe,
            self.train_step is not None,
        )
        variant = self.copy()
        torch.manual_seed(self.out.seed)
        try:
            change = F.apply_fix(variant, ctx, self.code_changes)
        except F.NeedsCodeChange:
            result.needs_code_change = True
            result.reason = "needs a code change (the snippet is printed)"
            return None
        except F.NotApplicable as exc:
            result.reason = str(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a fix that does not fit never stops the trial
            result.reason = f"the fix could not be applied: {type(exc).__name__}: {exc}"
            return None
        if change.model is not variant:  # the user's code change built a new model
            for pid, k in runner.group_map(self.settings, change.model).items():
                self.group_of.setdefault(pid, k)
        return change

    def attempt(self, finding: Finding, suggestion: Suggestion) -> TrialResult:
        """Apply, train (or reuse an identical run) and judge one suggestion."""
        result = TrialResult(suggestion.kind, finding, suggestion, "not applicable", "")
        change = self.apply(finding, suggestion, result)
        if change is None:
            return result
        result.layers = sorted(change.layers, key=lambda n: self.order.get(n, len(self.order)))
        result.change = change.description
        key = (suggestion.kind, tuple(change.layers), change.description)
        if key not in self.cache:
            try:
                name = f"{self.out.model_name} + {suggestion.kind}"
                done = self.train(change.model, change, name)
            except runner.ModelFailed as exc:
                result.reason = f"the model fails with this change: {exc}"
                return result
            self.spent += done.seconds
            self.cache[key] = (done, change)
        done, change = self.cache[key]
        self.judge(finding, result, done, change)
        return result

    def judge(
        self, finding: Finding, result: TrialResult, done: runner.Run, change: F.Change
    ) -> None:
        """Fill ``result`` from a trained run: verdict, losses, findings gone/left/new."""
        keys = V.finding_keys(done.report.findings, change.renames)
        gone = (finding.kind, finding.layer) not in keys
        judged = V.judge(self.baseline.losses, done.losses, gone, finding.kind)
        result.verdict, result.reason = judged.verdict, judged.reason
        if done.notes:
            result.reason += "; " + "; ".join(done.notes)
        result.loss_before = V.final_loss(self.baseline.losses)
        result.loss_after = V.final_loss(done.losses)
        result.losses, result.seconds = done.losses, done.seconds
        result.findings_gone = _key_names(self.base_keys - keys)
        result.findings_remaining = _key_names(self.base_keys & keys)
        result.findings_new = _key_names(keys - self.base_keys)
        if judged.verdict == "helps" and (
            self.best_run is None or result.loss_after < self.best_run[0]
        ):
            self.best_run = (result.loss_after, id(result), done.model)
