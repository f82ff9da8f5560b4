"""The NaN-origin recorder keeps one step's inputs, never every forward's."""

from __future__ import annotations

import gc
import warnings
import weakref

import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeWarning

torch.set_num_threads(1)

FORWARDS = 4000
LIMIT_BYTES = 10 * 2**20


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))


def _retained_bytes(refs: list[weakref.ref]) -> int:
    gc.collect()
    return sum(r().numel() * r().element_size() for r in refs if r() is not None)


def test_eval_forwards_with_gradients_on_do_not_pile_up():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with gradscope.watch(model, optimizer=opt), warnings.catch_warnings():
        warnings.simplefilter("ignore", GradscopeWarning)
        model.eval()
        for k in range(FORWARDS):  # 32 KB each: 125 MB if every input were kept
            x = torch.full((128, 64), float(k % 7))
            refs.append(weakref.ref(x))
            model(x)
            del x
        retained = _retained_bytes(refs)
    assert retained < LIMIT_BYTES, f"{retained / 2**20:.1f} MB of inputs retained"


def test_an_optimizer_recreated_after_watch_warns_once_and_stays_bounded():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with gradscope.watch(model, optimizer=opt) as scope, warnings.catch_warnings(
        record=True
    ) as caught:
        warnings.simplefilter("always")
        opt = torch.optim.SGD(model.parameters(), lr=0.01)  # the loop's own, unwatched
        g = torch.Generator().manual_seed(0)
        for _ in range(FORWARDS):
            x = torch.randn(128, 64, generator=g)
            refs.append(weakref.ref(x))
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            del x
        retained = _retained_bytes(refs)
    ours = [w for w in caught if issubclass(w.category, GradscopeWarning)]
    assert len(ours) == 1
    assert "1000 forward passes ran with gradients enabled but no training step was recorded" in (
        str(ours[0].message)
    )
    assert "not one created after watch()" in str(ours[0].message)
    assert scope.history.recorded == 0
    assert retained < LIMIT_BYTES, f"{retained / 2**20:.1f} MB of inputs retained"


def test_a_normal_loop_never_warns_about_missing_steps():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    with gradscope.watch(model, optimizer=opt), warnings.catch_warnings():
        warnings.simplefilter("error", GradscopeWarning)
        for _ in range(50):
            for _ in range(30):  # gradient accumulation: many forwards per step
                model(torch.randn(4, 64, generator=g)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
