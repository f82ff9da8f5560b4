"""The configuration space: a seeded draw of one small training run, and that run.

``draw(seed)`` returns a :class:`Config` (plain data, JSON-able); ``build(config)`` returns a
:class:`Scenario` holding fresh models, optimizers and data, whose ``train_step`` is the
training loop shared by the oracle and the scorer.  Nothing here imports gradscope.

Faulty knobs (a tiny init, a long sequence, a high learning rate, ...) only make a fault
*likely*: the label of a run is what ``oracle.label`` measures.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradscope_scenarios.generated import models as M

FAMILIES = (
    "mlp",
    "cnn",
    "rnn",
    "gru",
    "lstm",
    "loop_rnn",
    "transformer_pre",
    "transformer_post",
    "res_mlp",
    "res_cnn",
    "gan",
    "gan_container",
    "autoencoder",
    "siamese",
)
RECURRENT = ("rnn", "gru", "lstm", "loop_rnn")
GANS = ("gan", "gan_container")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "elu")
INITS = ("default", "kaiming", "xavier", "normal", "zero", "constant", "orthogonal")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")
BASE_LR = {
    "sgd": 0.1,
    "momentum": 0.03,
    "adagrad": 0.05,
    "rmsprop": 0.003,
    "adam": 0.005,
    "adamw": 0.005,
}
FAULTS = (
    "deep_squash",
    "tiny_init",
    "large_init",
    "high_lr",
    "neg_bias",
    "input_scale",
    "symmetric_init",
    "param_fault",
    "unsafe_op",
    "long_sequence",
    "recurrent_scale",
    "gan_saturating",
    "loss_scale",
)
D_IN, CLASSES, SEQ_FEATURES = 16, 4, 4
#: The number of distinct batches a run cycles through.
POOL = 8


@dataclass(frozen=True)
class Config:
    """Every knob of one run; ``fault`` names the recipe drawn ("none" for a benign draw)."""

    seed: int
    family: str
    depth: int = 3
    width: int = 16
    activation: str = "relu"
    init: str = "default"
    init_scale: float = 1.0
    recurrent_scale: float = 1.0
    norm: str = "none"
    optimizer: str = "adam"
    lr: float = 0.005
    seq_len: int = 8
    loss: str = "ce"
    batch: int = 32
    input_scale: float = 1.0
    loss_scale: float = 1.0  # the loss's multiplier; the GAN loops never apply it
    bias_shift: float = 0.0
    param_fault: str = "none"
    unsafe: str = "none"
    precision: str = "fp32"
    steps: int = 40
    frozen_first: bool = False
    zero_last: bool = False
    gan_loss: str = "nonsaturating"
    d_lr_mult: float = 1.0
    fault: str = "none"
    #: Which time steps a sequence's label depends on: ``"early"`` (the first two, a
    #: long-range task) or ``"recent"`` (the last two, a short-range one).
    task: str = "early"

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a plain dict."""
        return asdict(self)

    def short(self) -> str:
        """A one-line description of the knobs that differ from the defaults."""
        base = Config(seed=self.seed, family=self.family)
        diff = {k: v for k, v in asdict(self).items() if getattr(base, k) != v or k == "family"}
        diff.pop("seed", None)
        return " ".join(f"{k}={_fmt(v)}" for k, v in diff.items())


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def default_loss(family: str) -> str:
    """The loss a family trains with unless a draw picks another."""
    if family in GANS:
        return "gan"
    if family == "autoencoder":
        return "mse"
    if family == "siamese":
        return "triplet"
    return "ce"


def draw(seed: int) -> Config:
    """The configuration of run ``seed``: about half benign draws, half with one faulty knob."""
    rng = random.Random(seed)
    family = rng.choice(FAMILIES)
    optimizer = rng.choice(OPTIMIZERS)
    c = Config(
        seed=seed,
        family=family,
        depth=rng.randint(2, 4),
        width=rng.choice([12, 16, 24]),
        activation=rng.choice(ACTIVATIONS),
        optimizer=optimizer,
        lr=BASE_LR[optimizer] * rng.choice([0.5, 1.0, 2.0]),
        seq_len=rng.choice([5, 8, 12]),
        loss=default_loss(family),
        batch=rng.choice([16, 32, 64]),
        steps=rng.choice([30, 40, 50]),
    )
    c = _benign_variations(c, rng)
    if rng.random() < 0.75:
        options = [f for f in FAULTS if _applies(f, c.family)]
        fault = rng.choice(options)
        c = _apply_fault(replace(c, fault=fault), fault, rng)
    # Drawn from a generator of its own so that every knob above keeps its value: a third
    # of the sequence runs learn a short-range task, where a healthy recurrent net shows a
    # vanishing through-time ratio and learns anyway (a hard negative).
    sequence = c.family in RECURRENT or c.family.startswith("transformer")
    if sequence and random.Random(f"task-{seed}").random() < 1 / 3:
        c = replace(c, task="recent")
    return c


def _benign_variations(c: Config, rng: random.Random) -> Config:
    """Knobs that should not hurt: hard negatives for the detectors."""
    kw: dict[str, Any] = {}
    if c.family in ("mlp", "cnn", "res_mlp", "res_cnn", "autoencoder", "siamese"):
        kw["norm"] = rng.choice(["none", "none", "batchnorm", "layernorm"])
    if c.family not in GANS and c.family != "autoencoder" and c.family != "siamese":
        kw["loss"] = rng.choice(["ce", "ce", "ce", "bce", "mse", "l1", "hinge"])
    if c.family == "autoencoder":
        kw["loss"] = rng.choice(["mse", "l1", "bce"])
    r = rng.random()
    if r < 0.15:
        kw["init"] = rng.choice(["kaiming", "xavier", "orthogonal"])
    elif r < 0.25:
        kw["zero_last"] = True
    elif r < 0.32:
        kw["frozen_first"] = True
    if c.optimizer in ("adam", "adamw", "rmsprop", "adagrad") and rng.random() < 0.2:
        kw["loss_scale"] = rng.choice([100.0, 1e4])
    if c.family in ("mlp", "cnn", "res_mlp", "transformer_pre", "autoencoder", "siamese"):
        kw["precision"] = rng.choice(["fp32"] * 5 + ["bf16", "scaler", "bf16_scaler"])
    elif c.family not in GANS:
        kw["precision"] = rng.choice(["fp32"] * 6 + ["scaler"])
    if c.family in RECURRENT and c.family != "rnn" and rng.random() < 0.3:
        kw["seq_len"] = rng.choice([20, 30])
    if c.family in GANS:
        kw["gan_loss"] = "nonsaturating"
    if rng.random() < 0.1 and c.family not in GANS and c.family not in ("autoencoder", "siamese"):
        kw["unsafe"] = "log_softmax"
        kw["loss"] = "nll"
    if rng.random() < 0.1:
        kw["steps"] = 60
        kw["input_scale"] = 3.0
    return replace(c, **kw)


def _deep_depth(family: str, rng: random.Random) -> int:
    if family in RECURRENT:
        return 2
    if family in ("cnn", "res_cnn", "transformer_pre", "transformer_post"):
        return rng.randint(4, 5)
    return rng.randint(5, 9)


def _applies(fault: str, family: str) -> bool:
    if fault in ("long_sequence", "recurrent_scale"):
        return family in RECURRENT
    if fault == "gan_saturating":
        return family in GANS
    if fault == "unsafe_op":
        return family not in GANS and family not in ("autoencoder", "siamese")
    return True


def _apply_fault(c: Config, fault: str, rng: random.Random) -> Config:
    """Set the knobs of one fault recipe, at a random strength (some stay harmless)."""
    if fault == "deep_squash":
        return replace(
            c,
            activation=rng.choice(["sigmoid", "tanh"]),
            depth=_deep_depth(c.family, rng),
            init=rng.choice(["default", "normal"]),
            init_scale=rng.choice([0.05, 0.1, 0.3]),
            norm="none",
            seq_len=rng.choice([20, 40]) if c.family in RECURRENT else c.seq_len,
        )
    if fault == "tiny_init":
        return replace(c, init="normal", init_scale=rng.choice([1e-3, 1e-2, 3e-2]))
    if fault == "large_init":
        init = rng.choice(["normal", "kaiming", "orthogonal"])
        scale = rng.choice([1.0, 2.0, 4.0]) if init == "normal" else rng.choice([3.0, 6.0, 10.0])
        return replace(c, init=init, init_scale=scale, norm="none")
    if fault == "high_lr":
        return replace(c, lr=c.lr * rng.choice([10.0, 50.0, 300.0]))
    if fault == "neg_bias":
        return replace(
            c,
            activation="relu",
            bias_shift=rng.choice([-0.5, -2.0, -5.0]),
            norm="none",
            lr=c.lr * rng.choice([1.0, 5.0]),
        )
    if fault == "input_scale":
        return replace(
            c,
            activation=rng.choice(["sigmoid", "tanh", c.activation]),
            input_scale=rng.choice([5.0, 30.0, 100.0]),
            norm="none",
        )
    if fault == "symmetric_init":
        return replace(c, init=rng.choice(["zero", "constant"]), init_scale=rng.choice([0.05, 0.3]))
    if fault == "param_fault":
        return replace(c, param_fault=rng.choice(["unused", "detached"]))
    if fault == "unsafe_op":
        unsafe = rng.choice(["log_softmax", "exp", "div"])
        return replace(
            c,
            unsafe=unsafe,
            loss="nll" if unsafe == "log_softmax" else "ce",
            input_scale=rng.choice([1.0, 10.0, 100.0]),
            lr=c.lr * rng.choice([1.0, 10.0]),
            bias_shift=rng.choice([0.0, -1.0]) if unsafe == "div" else 0.0,
            precision="fp32",
        )
    if fault == "long_sequence":
        return replace(
            c,
            seq_len=rng.choice([30, 50, 80]) if c.family != "loop_rnn" else rng.choice([30, 50]),
            activation=rng.choice(["tanh", "sigmoid", c.activation]),
        )
    if fault == "recurrent_scale":
        return replace(c, recurrent_scale=rng.choice([1.5, 3.0, 6.0]), seq_len=rng.choice([12, 30]))
    if fault == "gan_saturating":
        return replace(c, gan_loss="saturating", d_lr_mult=rng.choice([1.0, 5.0, 20.0]))
    if fault == "loss_scale":
        return replace(c, loss_scale=rng.choice([1e2, 1e4, 1e6]))
    raise ValueError(fault)


# -- building ----------------------------------------------------------------------------
def _init(model: nn.Module, c: Config) -> None:
    """Apply the init scheme to every weight matrix, bias shifts and special layers."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.dim() >= 2 and "weight" in name:
                    _init_weight(p, c)
                elif "bias" in name:
                    if c.init in ("zero", "constant"):
                        p.fill_(0.0 if c.init == "zero" else c.init_scale)
                    if isinstance(module, (nn.Linear, nn.Conv2d)) and c.bias_shift:
                        p.add_(c.bias_shift)
            if isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)) and c.recurrent_scale != 1.0:
                for name, p in module.named_parameters():
                    if name.startswith("weight_hh"):
                        p.mul_(c.recurrent_scale)
            if isinstance(module, M.LoopCell) and c.recurrent_scale != 1.0:
                module.h.weight.mul_(c.recurrent_scale)


def _init_weight(p: torch.Tensor, c: Config) -> None:
    s = c.init_scale
    if c.init == "kaiming":
        nn.init.kaiming_normal_(p, nonlinearity="relu")
        p.mul_(s)
    elif c.init == "xavier":
        nn.init.xavier_normal_(p, gain=s)
    elif c.init == "normal":
        nn.init.normal_(p, 0.0, s)
    elif c.init == "zero":
        nn.init.zeros_(p)
    elif c.init == "constant":
        nn.init.constant_(p, s)
    elif c.init == "orthogonal":
        nn.init.orthogonal_(p, gain=s)


def _optimizer(c: Config, params: Any, lr: float) -> torch.optim.Optimizer:
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if c.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if c.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if c.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def _last_linear(model: nn.Module) -> nn.Module | None:
    if isinstance(model, M.Classifier):
        return model.head
    if isinstance(model, M.AutoEncoder):
        return model.dec[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _build_model(c: Config) -> nn.Module:
    f, w, d, a = c.family, c.width, c.depth, c.activation
    if f in ("mlp", "res_mlp"):
        body = (M.mlp if f == "mlp" else M.res_mlp)(D_IN, w, d, a, c.norm)
        return M.Classifier(body, w, CLASSES, c.unsafe, c.param_fault)
    if f in ("cnn", "res_cnn"):
        body = (M.cnn if f == "cnn" else M.res_cnn)(w, d, a, c.norm)
        return M.Classifier(body, w, CLASSES, c.unsafe, c.param_fault)
    if f in ("rnn", "gru", "lstm"):
        body = M.RecurrentFeatures(f, SEQ_FEATURES, w, 1 if d < 4 else 2, a)
        return M.Classifier(body, w, CLASSES, c.unsafe, c.param_fault)
    if f == "loop_rnn":
        loop = M.LoopRecurrent(SEQ_FEATURES, w, a)
        return M.Classifier(loop, w, CLASSES, c.unsafe, c.param_fault)
    if f.startswith("transformer"):
        body = M.TransformerFeatures(SEQ_FEATURES, w, min(d, 3), a, pre_ln=f.endswith("pre"))
        return M.Classifier(body, w, CLASSES, c.unsafe, c.param_fault)
    if f == "autoencoder":
        return M.AutoEncoder(D_IN, w, d, a, c.norm, bce=c.loss == "bce")
    if f == "siamese":
        return M.Classifier(M.mlp(D_IN, w, d, a, c.norm), w, 8, "none", c.param_fault)
    raise ValueError(f)


class Scenario:
    """One built run: fresh models, optimizers, data, and the training step.

    ``parts`` maps a part name to a model: ``{"model": m}``, or ``{"G": g, "D": d}`` for the
    two-optimizer GAN loop.  ``optimizers`` has the same keys.  Module names are reported
    with the part as prefix (``G.net.0``) except for the single part "model".
    """

    def __init__(self, config: Config) -> None:
        c = self.config = config
        torch.manual_seed(c.seed)
        self.parts: dict[str, nn.Module] = {}
        if c.family in GANS:
            g = M.Generator(c.width, c.depth, c.activation)
            d = M.Discriminator(c.width, c.depth, c.activation)
            _init(g, c)
            _init(d, c)
            if c.family == "gan":
                self.parts = {"G": g, "D": d}
                self.optimizers = {
                    "G": _optimizer(c, g.parameters(), c.lr),
                    "D": _optimizer(c, d.parameters(), c.lr * c.d_lr_mult),
                }
            else:
                gan = M.GAN(g, d)
                self.parts = {"model": gan}
                groups = [
                    {"params": list(g.parameters()), "lr": c.lr},
                    {"params": list(d.parameters()), "lr": c.lr * c.d_lr_mult},
                ]
                self.optimizers = {"model": _optimizer(c, groups, c.lr)}
        else:
            model = _build_model(c)
            _init(model, c)
            last = _last_linear(model)
            if c.zero_last and last is not None:
                with torch.no_grad():
                    last.weight.zero_()
            if c.frozen_first:
                first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
                for p in first.parameters():
                    p.requires_grad_(False)
            self.parts = {"model": model}
            params = [p for p in model.parameters() if p.requires_grad]
            self.optimizers = {"model": _optimizer(c, params, c.lr)}
        self.scaler = (
            torch.amp.GradScaler("cpu") if c.precision in ("scaler", "bf16_scaler") else None
        )
        gen = torch.Generator().manual_seed(10_000 + c.seed)
        self._teacher = torch.randn(D_IN, CLASSES, generator=gen)
        self._seq_teacher = torch.randn(SEQ_FEATURES, CLASSES, generator=gen)
        self._img_teacher = torch.randn(3, CLASSES, generator=gen)
        self._ae_mix = torch.randn(3, D_IN, generator=gen)

    # -- data ------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[Any, Any]:
        """The (input, target) batch of ``step``; a pool of 8 batches, cycled."""
        c = self.config
        gen = torch.Generator().manual_seed(c.seed * 100 + step % POOL)
        b, s = c.batch, c.input_scale
        f = c.family
        if f in ("mlp", "res_mlp"):
            x = torch.randn(b, D_IN, generator=gen)
            return x * s, (x @ self._teacher).argmax(1)
        if f in ("cnn", "res_cnn"):
            x = torch.randn(b, 3, 8, 8, generator=gen)
            x[:, :, :4] += torch.randn(b, 3, 1, 1, generator=gen)
            return x * s, (x[:, :, :4].mean((2, 3)) @ self._img_teacher).argmax(1)
        if f in RECURRENT or f.startswith("transformer"):
            x = torch.randn(b, c.seq_len, SEQ_FEATURES, generator=gen)
            cue = x[:, :2] if c.task == "early" else x[:, -2:]
            return x * s, (cue.sum(1) @ self._seq_teacher).argmax(1)
        if f == "autoencoder":
            x = torch.randn(b, 3, generator=gen) @ self._ae_mix
            x = torch.sigmoid(x) if c.loss == "bce" else x * s
            return x, x
        if f == "siamese":
            centers = self._teacher.T * 2
            k = torch.randint(0, CLASSES, (b,), generator=gen)
            other = (k + torch.randint(1, CLASSES, (b,), generator=gen)) % CLASSES

            def sample(cls: torch.Tensor) -> torch.Tensor:
                return (centers[cls] + torch.randn(b, D_IN, generator=gen)) * s

            return (sample(k), sample(k), sample(other)), None
        # GANs: (noise, real samples from a ring of 4 Gaussians)
        z = torch.randn(b, 4, generator=gen)
        angle = torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2)
        ring = torch.stack([angle.cos(), angle.sin()], 1) * 2
        return z, (ring + 0.1 * torch.randn(b, 2, generator=gen)) * s

    # -- losses ----------------------------------------------------------------------
    def loss_fn(self, out: torch.Tensor, y: Any) -> torch.Tensor:
        """The scaled loss of a single-model family, on float32 outputs."""
        c = self.config
        out = out.float()
        if c.family == "autoencoder":
            base = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy}[c.loss]
            return c.loss_scale * base(out, y)
        onehot = F.one_hot(y, CLASSES).float()
        if c.loss == "ce":
            value = F.cross_entropy(out, y)
        elif c.loss == "nll":
            value = F.nll_loss(out, y)
        elif c.loss == "bce":
            value = F.binary_cross_entropy_with_logits(out, onehot)
        elif c.loss == "mse":
            value = F.mse_loss(out, onehot)
        elif c.loss == "l1":
            value = F.l1_loss(out, onehot)
        else:
            value = F.multi_margin_loss(out, y)
        return c.loss_scale * value

    def constant_loss(self) -> float:
        """The loss of the best constant prediction over the pool of batches the run cycles
        through (what 'learned nothing' costs)."""
        c = self.config
        if c.family in GANS:
            return math.log(2.0)
        if c.family == "siamese":
            return c.loss_scale * 1.0
        y = torch.cat([self.batch(step)[1] for step in range(POOL)])
        if c.family == "autoencoder":
            return c.loss_scale * _constant_reconstruction(y, c.loss)
        return c.loss_scale * _constant_classification(y, c.loss)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision in ("bf16", "bf16_scaler"):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, **kw: Any) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward(**kw)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward(**kw)
            opt.step()

    # -- the loop --------------------------------------------------------------------
    def train_step(
        self, step: int, log: Callable[[str, torch.Tensor], None] | None = None
    ) -> dict[str, float]:
        """One training iteration; ``log(part, loss)`` is called before each part's step.

        Returns the loss of each player (``{"model": L}``, or ``{"G": .., "D": ..}`` for GANs).
        """
        c = self.config
        x, y = self.batch(step)
        if c.family == "gan":
            return self._gan_two_optimizers(x, y, log)
        if c.family == "gan_container":
            return self._gan_container(x, y, log)
        model, opt = self.parts["model"], self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        with self._autocast():
            if c.family == "siamese":
                a, p, n = (model(t) for t in x)
                loss = c.loss_scale * F.triplet_margin_loss(a.float(), p.float(), n.float())
            else:
                loss = self.loss_fn(model(x), y)
        if log is not None:
            log("model", loss)
        self._backward_step(loss, opt)
        return {"model": float(loss.detach())}

    def _gan_losses(
        self, d: nn.Module, fake_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bce = F.binary_cross_entropy_with_logits
        if self.config.gan_loss == "saturating":
            g_loss = -bce(fake_logits, torch.zeros_like(fake_logits))  # log(1 - D(G(z)))
        else:
            g_loss = bce(fake_logits, torch.ones_like(fake_logits))
        fooled = bce(fake_logits.detach(), torch.ones_like(fake_logits))
        return g_loss, fooled

    def _d_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits
        r, f = d(real), d(fake.detach())
        return bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f))

    def _gan_two_optimizers(self, z: Any, real: Any, log: Any) -> dict[str, float]:
        g, d = self.parts["G"], self.parts["D"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        fake = g(z)
        opt_d.zero_grad(set_to_none=True)
        d_loss = self._d_loss(d, real, fake)
        if log is not None:
            log("D", d_loss)
        self._backward_step(d_loss, opt_d)
        opt_g.zero_grad(set_to_none=True)
        g_loss, fooled = self._gan_losses(d, d(fake))
        if log is not None:
            log("G", fooled)
        self._backward_step(g_loss, opt_g)
        return {"G": float(fooled), "D": float(d_loss.detach())}

    def _gan_container(self, z: Any, real: Any, log: Any) -> dict[str, float]:
        gan, opt = self.parts["model"], self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        fake = gan.G(z)
        d_loss = self._d_loss(gan.D, real, fake)
        d_loss.backward()
        g_loss, fooled = self._gan_losses(gan.D, gan.D(fake))
        torch.autograd.backward(g_loss, inputs=list(gan.G.parameters()))
        if log is not None:
            log("model", fooled)
        opt.step()
        return {"G": float(fooled), "D": float(d_loss.detach())}

    def diagnose_args(self) -> tuple[nn.Module, list, Callable, torch.optim.Optimizer] | None:
        """(model, batches, loss_fn, optimizer) for ``diagnose``, or None when it does not fit.

        It fits a single model trained on (x, y) batches in float32 without a GradScaler.
        """
        c = self.config
        if c.family in GANS or c.family == "siamese" or c.precision != "fp32":
            return None
        batches = [self.batch(k) for k in range(8)]
        return self.parts["model"], batches, self.loss_fn, self.optimizers["model"]


def build(config: Config) -> Scenario:
    """A fresh, seeded :class:`Scenario` for ``config``."""
    return Scenario(config)


def layer_name(part: str, name: str) -> str:
    """The reported name of module ``name`` of ``part``."""
    if part == "model":
        return name
    return f"{part}.{name}" if name else part


def _constant_reconstruction(y: torch.Tensor, loss: str) -> float:
    """Best per-feature constant for an autoencoder's loss (mean, median, frequency)."""
    if loss == "mse":
        return float(y.var(0, unbiased=False).mean())
    if loss == "l1":
        return float((y - y.median(0).values).abs().mean())
    m = y.mean(0).clamp(1e-6, 1 - 1e-6)
    return float(-(y * m.log() + (1 - y) * (1 - m).log()).mean())


def _constant_classification(y: torch.Tensor, loss: str) -> float:
    """Best constant output for a classification loss, from the class frequencies."""
    p = torch.bincount(y, minlength=CLASSES).float() / len(y)
    if loss in ("ce", "nll"):
        return float(-(p[p > 0] * p[p > 0].log()).sum())
    if loss == "bce":
        q = p.clamp(1e-6, 1 - 1e-6)
        return float(-(q * q.log() + (1 - q) * (1 - q).log()).mean())
    if loss == "mse":
        return float((p * (1 - p)).mean())
    if loss == "l1":
        return float(torch.minimum(p, 1 - p).mean())
    # Multi-class hinge: convex and piecewise linear with kinks at integer differences, so
    # a best constant lies on the integer grid; favouring the frequent classes beats the
    # all-equal output's (C-1)/C.
    grid = torch.cartesian_prod(*[torch.arange(4.0)] * CLASSES)
    mean_hinge = [
        float(F.multi_margin_loss(c.expand(len(y), CLASSES), y))
        for c in grid
    ]
    return min(mean_hinge)
