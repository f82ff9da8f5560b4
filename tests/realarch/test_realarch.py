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


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_a_healthy_convnext_whose_blocks_start_gated_is_not_exploding(seed: int) -> None:
    """A stranger session's ConvNeXt (two stages, AdamW 1e-3, 40 steps): layer scale starts
    its blocks at 1e-6, so the stem gets ~1e3x their relative gradient from the first step;
    one jump, not growth layer by layer.  The loss falls 6x on every seed; no warning."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification

    import gradscope

    torch.manual_seed(0)
    config = ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=2, image_size=32
    )
    model = ConvNextForImageClassification(config)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(40):
            y = torch.randint(0, 2, (16,), generator=g)
            x = torch.randn(16, 3, 32, 32, generator=g) * 0.5
            x[:, :, :16] += (y.float() * 2 - 1).view(16, 1, 1, 1)  # class in the top half
            opt.zero_grad()
            loss = model(pixel_values=x, labels=y).loss
            scope.log_loss(loss)
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])  # healthy: the loss fell
    assert scope.report().at_least("warning") == []
