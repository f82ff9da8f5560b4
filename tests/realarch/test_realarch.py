"""Real architectures under gradscope: healthy recipes raise nothing, broken ones are named.

Each test first confirms its recipe without gradscope (the oracle in ``realarch_recipes``:
the loss falls, the loss diverges, the gradient through time is 1e4x or 0, ...), then
trains the same seeded recipe inside ``gradscope.watch(model, optimizer=opt)`` and checks
the report with ``realarch_verdict.check``: the expected kind, on the expected part of the
model (module-name prefix), with a sensible first fix (``Expect.why`` says what sensible
means per recipe).

Where gradscope answers wrong today the test is ``xfail(strict=True)`` with the answer it
gives instead, raising only :class:`WrongVerdict`: an oracle failure still fails, and a
fixed detector turns the xfail into a failure, so the mark is removed.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from realarch_recipes import RECIPES, plain_run, watched_run  # noqa: E402
from realarch_verdict import WrongVerdict, check  # noqa: E402

#: What gradscope says instead, for every recipe it gets wrong today.
WRONG_TODAY: dict[str, str] = {}


def _cases():
    for recipe_id in RECIPES:
        marks = []
        if recipe_id in WRONG_TODAY:
            marks.append(
                pytest.mark.xfail(strict=True, raises=WrongVerdict, reason=WRONG_TODAY[recipe_id])
            )
        yield pytest.param(recipe_id, id=recipe_id, marks=marks)


@pytest.mark.parametrize("recipe_id", _cases())
def test_recipe(recipe_id: str) -> None:
    """The oracle confirms the recipe; gradscope's report says what the recipe expects."""
    recipe = RECIPES[recipe_id]
    broken, evidence = recipe.oracle(plain_run(recipe_id))
    wanted = "broken" if recipe.expect.kind else "healthy"
    assert broken == bool(recipe.expect.kind), f"not {wanted} without gradscope: {evidence}"
    check(watched_run(recipe_id), recipe.expect)
