"""The catalogue of statistics gradscope records, each declared once.

A :class:`Statistic` says what it is a value *of* (a parameter or a module), what it
reads, and on which recorded steps it is measured.  The record's columns, the JSON layout,
the judge's check that a detector's statistics were measured, and the documentation
all come from this table.  To add a statistic: declare it here and compute it in
:mod:`gradscope.stats` (per parameter) or :class:`gradscope.stats.ActivationAccumulator`
(per module); :mod:`gradscope.recorder` moves it to the host with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Measured on every recorded step.
EVERY_STEP = "every recorded step"
#: Measured on detail steps: the first ten recorded steps, then one in ``detail_every``
#: (by default one in 10, spaced by their measured cost after 100 recorded steps).
DETAIL = "detail steps"
#: Measured only with ``full=True``.
FULL_ONLY = "full=True only"


@dataclass(frozen=True)
class Statistic:
    """One recorded statistic.

    Attributes:
        name: the column name in :class:`gradscope.history.StepRecord`.
        per: ``"parameter"`` (a column of ``record.grads``) or ``"module"`` (``record.acts``).
        cadence: :data:`EVERY_STEP`, :data:`DETAIL` or :data:`FULL_ONLY`.
        reads: what it measures, in a few words.
    """

    name: str
    per: str
    cadence: str
    reads: str

    @property
    def column(self) -> str:
        """The record column holding it (its name)."""
        return self.name


_S, _P, _M = Statistic, "parameter", "module"
_DECLARED = (
    _S("has_grad", _P, EVERY_STEP, "1 when the parameter got a gradient"),
    _S("grad_l2", _P, EVERY_STEP, "L2 norm of the gradient (NaN/Inf if an entry is)"),
    _S("grad_l1", _P, DETAIL, "L1 norm of the gradient (first 4,096 entries)"),
    _S("grad_max", _P, FULL_ONLY, "largest |entry| of the gradient"),
    _S("grad_nonfinite", _P, EVERY_STEP, "NaN/Inf entries of the gradient"),
    _S("param_norm", _P, DETAIL, "L2 norm of the parameter (kept in between)"),
    _S("update_norm", _P, DETAIL, "L2 norm of the optimizer's update (and on jumps)"),
    _S("row_spread", _P, DETAIL, "spread of weight rows on a fixed projection"),
    _S("row_twins", _P, DETAIL, "share of weight rows that are a copy of another row"),
    _S("grad_carried", _P, DETAIL, "share of one gradient left from the step before (next step)"),
    _S("numel", _P, EVERY_STEP, "entries of the parameter"),
    _S("calls", _M, DETAIL, "forward calls of the module in the step"),
    _S("numel", _M, DETAIL, "output entries of the module in the step"),
    _S("sumsq", _M, DETAIL, "sum of squares of the sampled output rows"),
    _S("sampled", _M, DETAIL, "output entries the shape statistics looked at"),
    _S("zero_sampled", _M, DETAIL, "entries the zero count looked at"),
    _S("zeros", _M, DETAIL, "exact zeros among the sampled outputs"),
    _S("saturated", _M, DETAIL, "sigmoid/tanh outputs within 1% of an asymptote (median call)"),
    _S("units", _M, DETAIL, "units (features or channels) of a ReLU output"),
    _S("silent_units", _M, DETAIL, "ReLU units that output 0 for every sample"),
    _S("dead_units", _M, DETAIL, "ReLU units silent for unit_window steps (2+ detail steps)"),
    _S("nonfinite", _M, DETAIL, "1 when the output had NaN/Inf (or a replay saw it)"),
    _S("input_nonfinite", _M, DETAIL, "1 when the module's input had NaN/Inf (or in a replay)"),
    _S("nonfinite_order", _M, DETAIL, "when, in calls, a replay saw the output go non-finite"),
    _S("input_rms", _M, DETAIL, "root mean square of the sampled rows of the module's input"),
    _S("time_grad_first", _M, DETAIL, "gradient reaching a recurrence's first time step"),
    _S("time_grad_last", _M, DETAIL, "gradient reaching a recurrence's last time step"),
    _S("output_spread", _M, DETAIL, "share of the model output that varies between samples"),
    _S("loss_term", _M, DETAIL, "the logged loss's own term, recomputed (output module)"),
    _S("constant_loss", _M, DETAIL, "the best constant prediction's loss (output module)"),
    _S("loss_input_fault", _M, DETAIL, "the loss's input mistake, coded (gradscope/loss_input.py)"),
    _S("fake_score", _M, DETAIL, "mean D(G(z)) of a saturating generator loss (output module)"),
    _S("functional_act", _M, DETAIL, "activation called as a function on the output, coded"),
)

#: Columns of the per-parameter table (``record.grads``), in order.
GRAD_COLUMNS = tuple(s.name for s in _DECLARED if s.per == "parameter")
#: Columns of the per-module table (``record.acts``), in order.
ACT_COLUMNS = tuple(s.name for s in _DECLARED if s.per == "module")
#: The count each share-of-outputs column is a fraction of (zeros, saturated).
SHARE_OF = {"zeros": "zero_sampled", "saturated": "sampled"}
#: Every statistic, keyed ``"grads.<column>"`` or ``"acts.<column>"``; the bare column name
#: works too where it is unambiguous (``"grad_l2"``, ``"dead_units"``).
STATISTICS: dict[str, Statistic] = {
    **{f"{'grads' if s.per == 'parameter' else 'acts'}.{s.name}": s for s in _DECLARED},
    **{s.name: s for s in _DECLARED if s.name != "numel"},
}


def table_of(statistic: Statistic) -> str:
    """``"grads"`` or ``"acts"``: the record attribute holding the statistic."""
    return "grads" if statistic.per == "parameter" else "acts"
