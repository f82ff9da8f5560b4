"""Real architectures x recipes: the plain-torch oracle against gradscope's findings.

Runs every recipe of ``tests/realarch/realarch_recipes.py`` (Hugging Face models from tiny
configs, random init, synthetic data; nothing is downloaded) twice: plain, where the oracle
decides healthy or broken from the loss, the gradient norms and the gradient through time,
and inside ``gradscope.watch(model, optimizer=opt)`` with default settings.  Prints a table
(oracle verdict, gradscope's findings, pass/fail) and saves
``benchmarks/results/realarch.json`` with, per recipe, the numbers needed to explain a wrong
answer: the role ``gradscope.modelinfo`` gives each module type, which layers carry depth,
per-layer |g|/|W|, weight growth, update ratios, whether a norm layer follows, and the
loss window the detectors judged.

    python benchmarks/realarch.py              # all recipes, about a minute on one thread
    python benchmarks/realarch.py gpt2 llama   # recipes of these models only
    python benchmarks/realarch.py --what-if    # re-judge with candidate detector changes

``--what-if`` patches today's internals in-process (helpers of ``gradscope_plugins.exploding``
and the layers ``gradscope_plugins.vanishing`` judges) to measure which wrong answers a
candidate change would fix and whether a healthy recipe would start to alarm; it is a
probe for the lead, tied to the current module layout, and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "realarch"))

import torch  # noqa: E402
from realarch_recipes import RECIPES, Recipe, _train, plain_run, watched_run  # noqa: E402
from realarch_verdict import judge  # noqa: E402

from gradscope.modelinfo import LayerInfo, ModelInfo, hooked_modules, module_role  # noqa: E402
from gradscope.signals import early, layer_signals, loss_trend, recent  # noqa: E402
from gradscope_plugins.judgement import depth_layers  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "realarch.json"
_TREND: Any = None


def _num(value: float) -> float | None:
    return float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else None


def _ratio(a: float, b: float) -> float | None:
    return _num(a / b) if b and math.isfinite(b) else None


def roles_by_type(model: torch.nn.Module) -> dict[str, str]:
    """The role gradscope gives each module type that owns trainable parameters."""
    out = {}
    for _, module in hooked_modules(model):
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            out[type(module).__name__] = module_role(module)
    return dict(sorted(out.items()))


def _next_is_norm(names: list[str], types: list[str], roles: dict[str, str], i: int) -> bool:
    """Whether the next parameter-owning module in forward order is a normalisation layer."""
    for j in range(i + 1, len(names)):
        if roles.get(names[j]) in ("weight", "embedding") or "Norm" in types[j]:
            return roles.get(names[j]) == "norm" or "Norm" in types[j]
    return False


def layer_table(report: Any, model_roles: dict[str, str]) -> list[dict[str, Any]]:
    """Per module owning parameters: role, depth-carrying or not, |g|/|W|, growth, update."""
    history = report.history
    signals = layer_signals(history)
    names = [s.name for s in signals]
    types = [s.type for s in signals]
    roles = {s.name: model_roles.get(s.name, "?") for s in signals}
    info = ModelInfo("m", [LayerInfo(n, t, roles[n]) for n, t in zip(names, types, strict=True)])
    depth = {s.name for s in depth_layers(history, info)}
    rows = []
    for i, s in enumerate(signals):
        finite_updates = s.update_ratio[torch.isfinite(s.update_ratio)]
        rows.append(
            {
                "layer": s.name,
                "type": s.type,
                "role": roles[s.name],
                "carries_depth": s.name in depth,
                "followed_by_norm": _next_is_norm(names, types, roles, i),
                "rel_grad_start": _num(early(s.relative_grad)),
                "rel_grad_end": _num(recent(s.relative_grad)),
                "grad_norm_start": _num(float(s.grad_norm[0])),
                "grad_norm_end": _num(recent(s.grad_norm)),
                "weight_growth": _num(float(s.param_norm[-1] / s.param_norm[0].clamp_min(1e-12))),
                # Scale invariance: a layer followed by a norm has |g| ~ 1/|W|, so |g|*|W|
                # stays put while |g|/|W| falls with |W|^2 as the weights grow.
                "grad_times_weight_change": _ratio(
                    recent(s.grad_norm * s.param_norm), early(s.grad_norm * s.param_norm)
                ),
                "update_ratio_max": _num(float(finite_updates.max()))
                if finite_updates.numel()
                else None,
            }
        )
    return rows


def run(recipe: Recipe) -> dict[str, Any]:
    """Oracle, gradscope's findings, verdict and diagnosis numbers of one recipe."""
    broken, evidence = recipe.oracle(plain_run(recipe.id))
    report = watched_run(recipe.id)
    passed, said = judge(report, recipe.expect)
    model = recipe.build()
    model_roles = {name: module_role(m) for name, m in hooked_modules(model)}
    trend = loss_trend(report.history)
    layers = layer_table(report, model_roles)
    losses = [float(v) for v in report.history.losses()]
    return {
        "recipe": recipe.id,
        "oracle": {"broken": broken, "evidence": evidence},
        "expected": {
            "kind": recipe.expect.kind,
            "prefix": recipe.expect.prefix,
            "fixes": sorted(recipe.expect.fixes),
            "why": recipe.expect.why,
        },
        "oracle_agrees_with_recipe": broken == bool(recipe.expect.kind),
        "gradscope": [
            {
                "kind": f.kind,
                "layer": f.layer,
                "severity": f.severity,
                "step": f.step,
                "first_fix": f.suggestions[0].kind if f.suggestions else None,
                "evidence": json.loads(json.dumps(f.evidence, default=str)),
            }
            for f in report.findings
        ],
        "said": said,
        "passed": passed,
        "diagnosis": {
            "roles_by_type": roles_by_type(model),
            "depth_layers": sum(row["carries_depth"] for row in layers),
            "modules_with_params": len(layers),
            "watched_loss_max_diff_from_plain": _num(
                max(
                    (abs(a - b) for a, b in zip(losses, plain_run(recipe.id).losses, strict=False)),
                    default=math.nan,
                )
            ),
            "loss_first_logged": _num(losses[0]) if losses else None,
            "loss_trend_first": _num(trend.first),
            "loss_trend_last": _num(trend.last),
            "loss_improvement": _num(trend.improvement),
            "layers": layers,
        },
    }


def _trend_from_first_loss(history: Any, window: int = 5) -> Any:
    """Today's loss trend with ``first`` = the first logged loss, not the first 5's median."""
    trend = _TREND(history, window)
    losses = history.losses()
    finite = losses[torch.isfinite(losses)]
    if finite.numel():
        trend.first = float(finite[0])
        trend.improvement = (trend.first - trend.last) / max(abs(trend.first), 1e-12)
    return trend


def _depth_without_grown_weights(history: Any, model_info: Any) -> list:
    """Today's depth layers minus those whose weights grew > 10x over the run: their |g|/|W|
    fell with the weights' size (|W|^2 behind a norm), not because the gradient faded."""
    return [
        s
        for s in depth_layers(history, model_info)
        if not float(s.param_norm[-1]) > 10 * float(s.param_norm[0])
    ]


def _depth_without_switched_off_blocks(history: Any, model_info: Any) -> list:
    """Today's depth layers minus those inside a block that owns a gain starting below 1e-3
    (LayerScale, ConvNeXt's gamma = 1e-6): their gradient is that small by design."""
    roles = {layer.name: layer.role for layer in model_info.layers}
    gated = [
        s.name
        for s in layer_signals(history)
        if roles.get(s.name) == "norm" and float(s.rms[0]) < 1e-3
    ]
    return [
        s
        for s in depth_layers(history, model_info)
        if not any(s.name.startswith(block + ".") for block in gated)
    ]


def _depth_without_both(history: Any, model_info: Any) -> list:
    """Both vanishing filters above together."""
    keep = {s.name for s in _depth_without_switched_off_blocks(history, model_info)}
    return [s for s in _depth_without_grown_weights(history, model_info) if s.name in keep]


def _largest_but_one(history: Any) -> dict[str, float]:
    """Per recurrence, the second-largest through-time ratio over the records: the ratio
    holds on at least 2 records (as the growth criteria ask), not on the median record."""
    first = history.act_series("time_grad_first")
    last = history.act_series("time_grad_last")
    out = {}
    for j, name in enumerate(history.module_names):
        ok = (last[:, j] > 0) & ~torch.isnan(first[:, j]) & torch.isfinite(last[:, j])
        ratios = (first[ok, j] / last[ok, j]).sort(descending=True).values
        if ratios.numel():
            out[name] = float(ratios[min(1, ratios.numel() - 1)])
    return out


_STASH: dict[str, Any] = {}


def _growth(signal: Any) -> float:
    """Peak gradient norm over its early size (0 when never finite)."""
    finite = signal.grad_norm[torch.isfinite(signal.grad_norm)]
    if finite.numel() == 0:
        return 0.0
    return float(finite.max()) / max(early(signal.grad_norm), 1e-30)


def _what_ifs() -> dict[str, list[tuple[Any, str, Any]]]:
    import gradscope_plugins.exploding as exploding  # noqa: PLC0415
    import gradscope_plugins.vanishing as vanishing  # noqa: PLC0415

    global _TREND
    _TREND = exploding.loss_trend
    over_training, diverged = exploding._over_training, exploding._diverged

    def stash_layers(history: Any, layers: list, *args: Any) -> None:
        _STASH["layers"] = layers
        over_training(history, layers, *args)

    def diverged_names_culprit(trend: Any, t: dict, evidence: Any) -> bool:
        """Divergence adds the layer whose gradient grew most as its culprit."""
        before = len(evidence.what)
        out = diverged(trend, t, evidence)
        if len(evidence.what) > before and not evidence.culprits and _STASH.get("layers"):
            grown = max(_STASH["layers"], key=_growth)
            evidence.culprits.append(grown.name)
        return out

    one_step = {**exploding.DEFAULTS, "update_steps": 1}
    changes = {
        "divergence_names_a_culprit": [
            (exploding, "_over_training", stash_layers),
            (exploding, "_diverged", diverged_names_culprit),
        ],
        "exploding_loss_from_first_step": [(exploding, "loss_trend", _trend_from_first_loss)],
        "through_time_on_2_records": [(exploding, "through_time_ratios", _largest_but_one)],
        "big_step_on_1_record": [(exploding, "DEFAULTS", one_step)],
        "vanishing_skips_grown_weights": [
            (vanishing, "depth_layers", _depth_without_grown_weights)
        ],
        "skip_layer_scaled_blocks": [
            (vanishing, "depth_layers", _depth_without_switched_off_blocks),
            (exploding, "depth_layers", _depth_without_switched_off_blocks),
        ],
    }
    # big_step_on_1_record is left out: it alarms on resnet18/healthy (the stem conv
    # moves by more than its size once at SGD lr 0.1).
    changes["all_but_big_step"] = [
        *changes["divergence_names_a_culprit"],
        *changes["exploding_loss_from_first_step"],
        *changes["through_time_on_2_records"],
        (vanishing, "depth_layers", _depth_without_both),
        (exploding, "depth_layers", _depth_without_switched_off_blocks),
    ]
    return changes


@contextlib.contextmanager
def _patched(patches: list[tuple[Any, str, Any]]):
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def what_if(chosen: list[Recipe]) -> int:
    """Pass/fail of each recipe today and under each candidate change."""
    changes = _what_ifs()
    names = ["today", *changes]
    for k, name in enumerate(names):
        print(f"column {k}: {name}")
    print(f"{'recipe':34s} " + " ".join(f"{k:>5d}" for k in range(len(names))))
    totals = dict.fromkeys(names, 0)
    for recipe in chosen:
        cells = [judge(watched_run(recipe.id), recipe.expect)]
        for patches in changes.values():
            with _patched(patches):
                cells.append(judge(_train(recipe, watch=True)[1], recipe.expect))
        for name, (passed, _) in zip(names, cells, strict=True):
            totals[name] += passed
        marks = " ".join(f"{'pass' if ok else 'FAIL':>5s}" for ok, _ in cells)
        print(f"{recipe.id:34s} {marks}")
        for name, (ok, said) in zip(names[1:], cells[1:], strict=True):
            if ok != cells[0][0]:
                print(f"    {name}: {said}")
    print(f"{'passed':34s} " + " ".join(f"{totals[n]:>5d}" for n in names))
    return 0


def main(argv: list[str]) -> int:
    """Print the table, save the JSON; exit 0 (wrong answers are the output, not an error)."""
    torch.set_num_threads(1)
    if "--what-if" in argv:
        argv = [a for a in argv if a != "--what-if"]
        return what_if([r for r in RECIPES.values() if not argv or r.model in argv])
    chosen = [r for r in RECIPES.values() if not argv or r.model in argv]
    rows = []
    print(f"{'recipe':34s} {'oracle':8s} {'result':6s} gradscope (warning and above)")
    for recipe in chosen:
        row = run(recipe)
        rows.append(row)
        oracle = "broken" if row["oracle"]["broken"] else "healthy"
        print(f"{recipe.id:34s} {oracle:8s} {'pass' if row['passed'] else 'FAIL':6s} {row['said']}")
    passed = sum(r["passed"] for r in rows)
    print(
        f"\n{passed} of {len(rows)} recipes answered right; oracle confirms "
        f"{sum(r['oracle_agrees_with_recipe'] for r in rows)} of {len(rows)} recipes."
    )
    if not argv:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "transformers": _transformers_version()}
        OUT.write_text(json.dumps({"meta": meta, "recipes": rows}, indent=1) + "\n")
        print(f"saved {OUT.relative_to(ROOT)}")
    return 0


def _transformers_version() -> str:
    import transformers  # noqa: PLC0415

    return transformers.__version__


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
