"""`trial` on real architectures: for each broken recipe, gradscope's fix trials, run on a
fresh copy of the recipe's model with its own batches, loss and optimizer, find a fix
that helps, and the first fix printed without trials is among those that help."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from realarch_recipes import RECIPES, watched_run  # noqa: E402

import gradscope  # noqa: E402

#: Broken recipes trained with one optimizer at a fixed rate (a GAN's two players and a
#: rate changed mid-run need a loop of their own).
TRIED = [
    rid
    for rid, recipe in RECIPES.items()
    if recipe.expect.kind and not recipe.gan and recipe.lr_at is None
]


def _step(recipe: Any):
    """The recipe's own training step, as trial's ``train_step``."""

    def step(model: torch.nn.Module, batch: Any, optimizer: Any, scope: Any) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = recipe.loss(model, batch[0])
        scope.log_loss(loss)
        loss.backward()
        optimizer.step()
        return loss

    return step


@pytest.mark.parametrize("recipe_id", TRIED)
def test_trial_finds_a_fix_that_helps_and_the_first_printed_fix_is_one(recipe_id: str) -> None:
    recipe = RECIPES[recipe_id]
    report = watched_run(recipe_id)
    (finding,) = [f for f in report.at_least("warning") if f.kind == recipe.expect.kind][:1]
    torch.manual_seed(0)
    model = recipe.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(recipe.batch(k), None) for k in range(recipe.steps)]

    result = gradscope.trial(
        model, batches, None, report, steps=recipe.steps, train_step=_step(recipe)
    )

    best = result.results[0]
    assert best.verdict == "helps", result.summary()
    first = result.result_for(finding, finding.suggestions[0].kind)
    assert first is not None and first.verdict == "helps", result.summary()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
