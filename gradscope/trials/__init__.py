"""Fix trials: train each suggested fix on a copy of the user's model and judge it again.

One module per job: :mod:`~gradscope.trials.fixes` applies a fix to a copy,
:mod:`~gradscope.trials.runner` trains a copy, :mod:`~gradscope.trials.verdict` judges
it against the baseline, :mod:`~gradscope.trials.report` holds and shows the results,
:mod:`~gradscope.trials.session` runs them all (:func:`trial`).
"""

from __future__ import annotations

from gradscope.trials.report import TrialReport, TrialResult
from gradscope.trials.session import trial

__all__ = ["TrialReport", "TrialResult", "trial"]
