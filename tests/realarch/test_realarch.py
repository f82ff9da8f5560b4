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
from realarch_recipes import RECIPES, plain_run, watched_run
from realarch_verdict import WrongVerdict, check

#: What gradscope says instead, for every recipe it gets wrong today.
WRONG_TODAY = {
    "resnet/no_batchnorm_sgd_lr_1": (
        "exploding_gradient on classifier.1 (the head), not the BatchNorm-less backbone"
    ),
    "convnext/healthy": (
        "vanishing_gradient warning on convnext.encoder.stages.0.layers.0.dwconv at step 0, "
        "fix add_batchnorm"
    ),
    "gpt2/adamw_lr_1": (
        "nothing: GPT-2's Conv1D layers get role 'other', so no layer carries depth and the "
        "exploding detector returns before looking at the loss (5.6 -> 150)"
    ),
    "bert/lr_100x_at_30": (
        "vanishing_gradient error on bert.encoder.layer.0.attention.self.value, first fix "
        "use_relu"
    ),
    "llama/adamw_lr_1": (
        "vanishing_gradient warning on model.layers.1.self_attn.v_proj, first fix add_batchnorm"
    ),
    "gru/recurrent_weights_x16": (
        "vanishing_gradient error on rnn (fix add_batchnorm) next to exploding_gradient warning"
    ),
    "lstm/recurrent_weights_x16": "nothing",
    "tanh_mlp/init_std_0.01": "vanishing_gradient on layer 8, not the input layer 0",
    "gan/nonsaturating_loss": "exploding_gradient error on 0 (first fix clip_grad_norm)",
    "gan/saturating_loss": (
        "vanishing_gradient on 0 but first fix add_batchnorm: watch(netG) has no "
        "generator/discriminator names, so the GAN plan never applies"
    ),
}


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
