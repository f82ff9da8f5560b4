"""Training recipes on real architectures: each one run plain (the oracle) and under gradscope.

A recipe is a model, its data, its optimizer and a number of steps.  ``plain_run`` trains it
without gradscope and measures what a textbook says to look at (the loss, the gradient
norms, the gradient that reaches the first time step); ``watched_run`` trains the same
seeded recipe the way a user would, inside ``gradscope.watch(model, optimizer=opt)`` with
``scope.log_loss(loss)``, and returns the report.  Each recipe states what gradscope should
say (``Expect``) and how the oracle decides the recipe is really healthy or really broken.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import realarch_models as M
import torch
from torch import nn

import gradscope

F = nn.functional


@dataclass(frozen=True)
class Expect:
    """What gradscope should report: nothing (``kind`` None) or one finding.

    ``prefix`` is the module-name prefix (at a dot boundary) the finding's layer must have,
    "" for any layer; ``fixes`` are the suggestion kinds that count as a sensible first fix
    and ``why`` says why those.
    """

    kind: str | None = None
    prefix: str = ""
    fixes: frozenset[str] = frozenset()
    why: str = ""


@dataclass
class PlainRun:
    """What the plain loop measured: losses, per-parameter gradient and weight norms per step."""

    losses: list[float]
    grad_norms: list[dict[str, float]]
    param_norms: list[dict[str, float]]
    extra: dict[str, float] = field(default_factory=dict)

    def total_grad_norm(self) -> list[float]:
        """The global gradient L2 norm of each step."""
        return [math.sqrt(sum(v * v for v in step.values())) for step in self.grad_norms]


@dataclass(frozen=True)
class Recipe:
    """One model trained one way; ``oracle`` says (broken?, the numbers that say so)."""

    model: str
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    steps: int
    expect: Expect
    oracle: Callable[[PlainRun], tuple[bool, str]]
    lr_at: Callable[[int], float | None] | None = None
    gan: bool = False

    @property
    def id(self) -> str:
        """model/recipe, as tables and test ids show it."""
        return f"{self.model}/{self.name}"


# -- losses --------------------------------------------------------------------------------


def hf_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The loss a Hugging Face model computes from ``labels``."""
    return model(**batch).loss


def xent(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Cross-entropy of a plain classifier."""
    x, y = batch
    return F.cross_entropy(model(x), y)


# -- oracles -------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    return finite[len(finite) // 2] if finite else math.nan


def loss_falls(run: PlainRun, by: float = 0.1) -> tuple[bool, str]:
    """Healthy: every loss finite and the last 5 losses' median below (1 - by) x the first 5."""
    first, last = _median(run.losses[:5]), _median(run.losses[-5:])
    finite = all(math.isfinite(v) for v in run.losses)
    healthy = finite and last < (1 - by) * first
    return (not healthy), f"loss {first:.3g} -> {last:.3g} (median of first/last 5)"


def fades_toward_input(run: PlainRun) -> tuple[bool, str]:
    """Broken: at the first step the input layer's bias gradient (the gradient reaching its
    output) is < 1e-3 of the output layer's, and the loss does not fall."""
    weights = [n for n in run.grad_norms[0] if n.endswith("bias")]
    first, last = run.grad_norms[0][weights[0]], run.grad_norms[0][weights[-1]]
    stuck, loss_text = loss_falls(run)
    ratio = first / last if last > 0 else math.nan
    return ratio < 1e-3 and stuck, (
        f"|grad {weights[0]}| / |grad {weights[-1]}| at step 0 = {ratio:.3g}; {loss_text}"
    )


def diverges(run: PlainRun, rise: float = 3.0) -> tuple[bool, str]:
    """Broken: the loss turns non-finite, or its peak ends up ``rise`` x above the first loss."""
    first = run.losses[0]
    peak = max((v for v in run.losses if math.isfinite(v)), default=math.nan)
    nonfinite = not all(math.isfinite(v) for v in run.losses)
    grads = run.total_grad_norm()
    g0 = grads[0]
    gmax = max((g for g in grads if math.isfinite(g)), default=math.nan)
    broken = nonfinite or peak > rise * first
    return broken, (
        f"loss {first:.3g} -> peak {peak:.3g}, last {run.losses[-1]:.3g}"
        + (" (non-finite)" if nonfinite else "")
        + f"; grad norm {g0:.3g} -> max {gmax:.3g}"
    )


def jumps_after(step: int) -> Callable[[PlainRun], tuple[bool, str]]:
    """Broken: once the learning rate jumps at ``step`` the loss peaks above 2x its level
    before the jump and ends no better than it was."""

    def oracle(run: PlainRun) -> tuple[bool, str]:
        before = _median(run.losses[step - 5 : step])
        after = max((v for v in run.losses[step:] if math.isfinite(v)), default=math.inf)
        end = _median(run.losses[-5:])
        grads = run.total_grad_norm()
        g_before = _median(grads[step - 5 : step])
        g_after = max((g for g in grads[step:] if math.isfinite(g)), default=math.inf)
        broken = after > 2 * before and not end < before
        return broken, (
            f"loss before the jump {before:.3g}, peak after {after:.3g}, last 5 {end:.3g}; "
            f"grad norm {g_before:.3g} -> max {g_after:.3g}"
        )

    return oracle


def through_time(kind: str, threshold: float) -> Callable[[PlainRun], tuple[bool, str]]:
    """Broken: ||dL/dx_0|| / ||dL/dx_T|| at init is above ``threshold`` (kind "exploding")
    or below it (kind "vanishing"), and the loss does not fall."""

    def oracle(run: PlainRun) -> tuple[bool, str]:
        ratio = run.extra["through_time_ratio"]
        stuck, loss_text = loss_falls(run)
        beyond = ratio > threshold if kind == "exploding" else ratio < threshold
        return beyond and stuck, f"dL/dx_0 / dL/dx_T at init {ratio:.3g}; {loss_text}"

    return oracle


def exploding_through_time(run: PlainRun) -> tuple[bool, str]:
    """Broken: the gradient reaching the first time step is > 100x the last step's at init
    (backpropagation through time multiplies it up at every step)."""
    ratio = run.extra["through_time_ratio"]
    grads = run.total_grad_norm()
    _, loss_text = loss_falls(run)
    return ratio > 100, (
        f"dL/dx_0 / dL/dx_T at init {ratio:.3g}; grad norm {grads[0]:.3g} -> max "
        f"{max(grads):.3g}; {loss_text}"
    )


def generator_starves(run: PlainRun) -> tuple[bool, str]:
    """Broken: the generator's gradient norm falls 10x from its start while D(G(z)) < 0.05."""
    grads = run.total_grad_norm()
    start, end = _median(grads[:5]), _median(grads[-5:])
    d_fake = run.extra["d_on_fake_last"]
    return end < 0.1 * start and d_fake < 0.05, (
        f"generator grad norm {start:.3g} -> {end:.3g}; D(G(z)) at the end {d_fake:.3g}; "
        f"distance of E[G(z)] to the real mean {run.extra['mean_gap_first']:.3g} -> "
        f"{run.extra['mean_gap_last']:.3g}"
    )


def generator_learns(run: PlainRun) -> tuple[bool, str]:
    """Healthy: the generator's samples close at least a third of the gap to the real mean."""
    first, last = run.extra["mean_gap_first"], run.extra["mean_gap_last"]
    return not (last < 2 / 3 * first), (
        f"distance of E[G(z)] to the real mean {first:.3g} -> {last:.3g}; "
        f"D(G(z)) at the end {run.extra['d_on_fake_last']:.3g}"
    )


# -- running -------------------------------------------------------------------------------


def _norms(model: nn.Module) -> tuple[dict[str, float], dict[str, float]]:
    grads = {
        # float64: a float32 norm of entries below ~1e-19 underflows to exactly 0.
        n: float(p.grad.detach().double().norm())
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    weights = {n: float(p.detach().norm()) for n, p in model.named_parameters()}
    return grads, weights


def _set_lr(optimizer: torch.optim.Optimizer, lr: float | None) -> None:
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def _through_time_ratio(model: nn.Module, batch: tuple, loss: Callable) -> float:
    """||dL/dx_0|| / ||dL/dx_T|| on one batch: how much of the gradient reaches step 0."""
    x, y = batch
    x = x.clone().requires_grad_(True)
    loss(model, (x, y)).backward()
    g = x.grad.norm(dim=(0, 2))
    model.zero_grad(set_to_none=True)
    return float(g[0] / g[-1].clamp_min(1e-30))


def _train(recipe: Recipe, watch: bool) -> tuple[PlainRun, Any]:
    torch.set_num_threads(1)
    if recipe.gan:
        return _train_gan(recipe, watch)
    model = recipe.build()
    extra = {}
    if recipe.model in ("gru", "lstm", "rnn"):
        extra["through_time_ratio"] = _through_time_ratio(model, recipe.batch(0), recipe.loss)
    optimizer = recipe.optimizer(model.parameters())
    losses, grads, weights = [], [], []
    scope_cm = gradscope.watch(model, optimizer=optimizer) if watch else contextlib.nullcontext()
    with scope_cm as scope:
        for k in range(recipe.steps):
            if recipe.lr_at is not None:
                _set_lr(optimizer, recipe.lr_at(k))
            batch = recipe.batch(k)
            optimizer.zero_grad(set_to_none=True)
            loss = recipe.loss(model, batch)
            if scope is not None:
                scope.log_loss(loss)
            loss.backward()
            if scope is None:
                g, w = _norms(model)
                grads.append(g)
                weights.append(w)
            optimizer.step()
            losses.append(float(loss.detach()))
    report = scope.report() if scope is not None else None
    return PlainRun(losses, grads, weights, extra), report


def _train_gan(recipe: Recipe, watch: bool) -> tuple[PlainRun, Any]:
    """The standard two-optimizer GAN loop; gradscope watches the generator only."""
    net_g, net_d = M.generator(), M.discriminator()
    opt_g = recipe.optimizer(net_g.parameters())
    opt_d = torch.optim.Adam(net_d.parameters(), lr=5e-2)  # a fast discriminator
    saturating = recipe.name == "saturating_loss"
    losses, grads, weights = [], [], []
    real_mean = M.gan_real(0, 4096).mean(dim=0)
    with torch.no_grad():
        gap_first = float((net_g(M.gan_noise(999, 1024)).mean(dim=0) - real_mean).norm())
    scope_cm = gradscope.watch(net_g, optimizer=opt_g) if watch else contextlib.nullcontext()
    with scope_cm as scope:
        for k in range(recipe.steps):
            z, real = M.gan_noise(k), M.gan_real(k)
            fake = net_g(z)
            opt_d.zero_grad(set_to_none=True)
            d_real, d_fake = net_d(real), net_d(fake.detach())
            d_loss = F.binary_cross_entropy(d_real, torch.ones_like(d_real))
            d_loss = d_loss + F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake))
            d_loss.backward()
            opt_d.step()

            opt_g.zero_grad(set_to_none=True)
            d_on_fake = net_d(fake)
            if saturating:
                g_loss = torch.log(1 - d_on_fake).mean()
            else:
                g_loss = F.binary_cross_entropy(d_on_fake, torch.ones_like(d_on_fake))
            if scope is not None:
                scope.log_loss(g_loss)
            g_loss.backward()
            if scope is None:
                g, w = _norms(net_g)
                grads.append(g)
                weights.append(w)
            opt_g.step()
            losses.append(float(g_loss.detach()))
    with torch.no_grad():
        samples = net_g(M.gan_noise(999, 1024))
        extra = {
            "mean_gap_first": gap_first,
            "mean_gap_last": float((samples.mean(dim=0) - real_mean).norm()),
            "d_on_fake_last": float(net_d(samples).mean()),
        }
    report = scope.report() if scope is not None else None
    return PlainRun(losses, grads, weights, extra), report


@functools.cache
def plain_run(recipe_id: str) -> PlainRun:
    """The recipe trained without gradscope (cached: tests and the benchmark share it)."""
    return _train(RECIPES[recipe_id], watch=False)[0]


@functools.cache
def watched_run(recipe_id: str) -> Any:
    """The recipe trained inside ``gradscope.watch`` with default settings; the Report."""
    return _train(RECIPES[recipe_id], watch=True)[1]


# -- the recipes ---------------------------------------------------------------------------


def _adamw(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda params: torch.optim.AdamW(params, lr=lr)


def _adam(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda params: torch.optim.Adam(params, lr=lr)


def _hf_healthy(
    model: str, build: Callable[[], nn.Module], batch: Callable, steps: int = 30
) -> Recipe:
    """The normal Hugging Face recipe: AdamW at 1e-3, no alarm expected, the loss must fall."""
    return Recipe(model, "healthy", build, batch, hf_loss, _adamw(1e-3), steps, HEALTHY, loss_falls)


def _sgd(lr: float, momentum: float = 0.9) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


HEALTHY = Expect(why="a normal optimizer and learning rate for the architecture: no alarm")
LR_FIXES = frozenset({"lower_lr", "clip_grad_norm"})
_LR_WHY = (
    "the weights start at a sane scale and the learning rate is too large, so lowering it or "
    "clipping is the fix; an init or normalisation fix would be wrong on a model that already "
    "has LayerNorm"
)

_LR_WHY_BN = (
    "BatchNorm is in place and the weights start at a sane scale: the step is too large, so "
    "lowering the learning rate or clipping is the fix"
)


def _recipes() -> list[Recipe]:
    img = M.image_batch
    r = [
        Recipe("resnet", "healthy", M.resnet, img, hf_loss, _sgd(0.05), 30, HEALTHY, loss_falls),
        Recipe(
            "resnet",
            "no_batchnorm_sgd_lr_1",
            M.resnet_without_batchnorm,
            img,
            hf_loss,
            _sgd(1.0, momentum=0.0),
            30,
            Expect(
                "exploding_gradient",
                "resnet",
                frozenset({"lower_lr", "clip_grad_norm", "add_batchnorm"}),
                "without BatchNorm nothing rescales the activations; lowering the learning "
                "rate, clipping or putting normalisation back all address it",
            ),
            diverges,
        ),
        Recipe("resnet18", "healthy", M.resnet18, img, hf_loss, _sgd(0.1), 30, HEALTHY, loss_falls),
        *(
            Recipe(
                "resnet18",
                f"sgd_lr_{lr:g}",
                M.resnet18,
                img,
                hf_loss,
                _sgd(lr),
                30,
                Expect("exploding_gradient", "resnet", LR_FIXES, _LR_WHY_BN),
                diverges,
            )
            for lr in (1.0, 2.0)
        ),
        Recipe(
            "mobilenet_v1",
            "healthy",
            M.mobilenet_v1,
            img,
            hf_loss,
            _adam(1e-3),
            30,
            HEALTHY,
            loss_falls,
        ),
        Recipe(
            "mobilenet_v2",
            "healthy",
            M.mobilenet_v2,
            img,
            hf_loss,
            _adam(1e-3),
            30,
            HEALTHY,
            loss_falls,
        ),
        _hf_healthy("vit", M.vit, img),
        _hf_healthy("convnext", M.convnext, img),
        _hf_healthy("gpt2", M.gpt2, M.lm_batch),
        _hf_healthy("qwen2", M.qwen2, M.lm_batch),
        _hf_healthy("distilbert", M.distilbert, M.classify_tokens_batch, steps=60),
        _hf_healthy("swin", M.swin, img),
        _hf_healthy("wav2vec2", M.wav2vec2, M.audio_batch, steps=40),
        Recipe(
            "gpt2",
            "adamw_lr_1",
            M.gpt2,
            M.lm_batch,
            hf_loss,
            _adamw(1.0),
            30,
            Expect("exploding_gradient", "transformer", LR_FIXES, _LR_WHY),
            diverges,
        ),
        _hf_healthy("bert", M.bert, M.classify_tokens_batch, steps=60),
        Recipe(
            "bert",
            "lr_100x_at_30",
            M.bert,
            M.classify_tokens_batch,
            hf_loss,
            _adamw(1e-3),
            60,
            Expect("exploding_gradient", "bert", LR_FIXES, _LR_WHY),
            jumps_after(30),
            lr_at=lambda k: 1e-1 if k == 30 else None,
        ),
        _hf_healthy("t5", M.t5, M.seq2seq_batch),
        _hf_healthy("llama", M.llama, M.lm_batch),
        Recipe(
            "llama",
            "adamw_lr_1",
            M.llama,
            M.lm_batch,
            hf_loss,
            _adamw(1.0),
            30,
            Expect("exploding_gradient", "model", LR_FIXES, _LR_WHY),
            diverges,
        ),
    ]
    for cell, name in ((nn.GRU, "gru"), (nn.LSTM, "lstm")):
        r += [
            Recipe(
                name,
                "healthy",
                functools.partial(M.recurrent, cell),
                M.signal_batch,
                xent,
                _sgd(0.1),
                40,
                HEALTHY,
                loss_falls,
            ),
            Recipe(
                name,
                "recurrent_weights_x16",
                functools.partial(M.recurrent, cell, scale=16.0),
                M.signal_batch,
                xent,
                _sgd(0.1),
                40,
                Expect(
                    "exploding_gradient",
                    "rnn",
                    frozenset({"orthogonal_init", "clip_grad_norm"}),
                    "the recurrent matrix is too large: a norm-preserving (orthogonal) "
                    "recurrent init or clipping",
                ),
                exploding_through_time,
            ),
        ]
    r += [
        Recipe(
            "tanh_mlp",
            "healthy_xavier",
            functools.partial(M.tanh_mlp, xavier=True),
            M.vector_batch,
            xent,
            _sgd(0.05),
            30,
            HEALTHY,
            loss_falls,
        ),
        Recipe(
            "tanh_mlp",
            "init_std_0.01",
            functools.partial(M.tanh_mlp, std=0.01),
            M.vector_batch,
            xent,
            _sgd(0.05),
            30,
            Expect(
                "vanishing_gradient",
                "0",
                frozenset({"xavier_init", "use_relu"}),
                "the weights are ~100x too small for tanh: Xavier init (or ReLU with the "
                "Kaiming init its snippet includes) is the fix",
            ),
            fades_toward_input,
        ),
        Recipe(
            "rnn",
            "healthy_10_steps",
            functools.partial(M.recurrent, nn.RNN, 4),
            functools.partial(M.first_input_batch, steps=10),
            xent,
            _adam(1e-2),
            40,
            HEALTHY,
            loss_falls,
        ),
        Recipe(
            "rnn",
            "first_input_100_steps",
            functools.partial(M.recurrent, nn.RNN, 4),
            M.first_input_batch,
            xent,
            _adam(1e-2),
            40,
            Expect(
                "vanishing_gradient",
                "rnn",
                frozenset({"use_lstm_or_gru"}),
                "a vanilla RNN cannot carry the gradient over 100 steps: a gated cell",
            ),
            through_time("vanishing", 1e-3),
        ),
        Recipe(
            "gan",
            "nonsaturating_loss",
            M.generator,
            None,
            None,
            _adam(1e-3),
            40,
            HEALTHY,
            generator_learns,
            gan=True,
        ),
        Recipe(
            "gan",
            "saturating_loss",
            M.generator,
            None,
            None,
            _adam(1e-3),
            40,
            Expect(
                "vanishing_gradient",
                "",
                frozenset({"use_nonsaturating_loss"}),
                "the loss itself flattens where the discriminator wins: the non-saturating "
                "loss is the fix, not the architecture",
            ),
            generator_starves,
            gan=True,
        ),
    ]
    return r


RECIPES: dict[str, Recipe] = {recipe.id: recipe for recipe in _recipes()}
