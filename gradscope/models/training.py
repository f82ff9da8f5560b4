"""Training steps for the reference models: the plain one and the GAN's two-player step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: A step: (model, batch, optimizer, scope) -> the loss to report (already backpropagated).
Step = Callable[[nn.Module, tuple[Any, Any], torch.optim.Optimizer, Any], torch.Tensor]


def supervised_step(loss_fn: Callable[[Any, Any], torch.Tensor], clip: float | None = None) -> Step:
    """zero_grad, forward, loss, backward, (clip the gradient norm to ``clip``,) step."""

    def step(model: nn.Module, batch: tuple, optimizer: torch.optim.Optimizer, scope: Any):
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if scope is not None:
            scope.log_loss(loss)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss

    return step


def gan_step(saturating: bool) -> Step:
    """One simultaneous update of generator and discriminator with BCE, as in the notes.

    The batch is (noise z, real samples).  The discriminator learns real -> 1, fake -> 0.
    The generator minimises log(1 - D(G(z))) when ``saturating`` (the original minimax
    loss, whose gradient vanishes once D rejects the fakes) or -log D(G(z)) otherwise.
    The loss logged is -log D(G(z)) in both cases, so the two runs compare.
    """
    bce = nn.functional.binary_cross_entropy

    def step(model: nn.Module, batch: tuple, optimizer: torch.optim.Optimizer, scope: Any):
        z, real = batch
        generator, discriminator = model.generator, model.discriminator
        optimizer.zero_grad(set_to_none=True)
        fake = generator(z)
        d_real, d_fake = discriminator(real), discriminator(fake.detach())
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        d_loss.backward()
        d_on_fake = discriminator(fake)
        if saturating:
            g_loss = torch.log1p(-d_on_fake.clamp_max(1 - 1e-7)).mean()
        else:
            g_loss = bce(d_on_fake, torch.ones_like(d_on_fake))
        # The generator's loss trains only the generator.
        torch.autograd.backward(g_loss, inputs=list(generator.parameters()))
        fooled = bce(d_on_fake.detach(), torch.ones_like(d_on_fake))
        if scope is not None:
            scope.log_loss(fooled)
        optimizer.step()
        return fooled

    return step
