"""Per-layer plots of a report with matplotlib, drawn on Figure objects (no display needed).

No global matplotlib state is touched: no backend switch, no rcParams edits (styles go
through ``rc_context`` around each save), so a notebook keeps its inline figures.

One function draws each view on an Axes; the single-view PNGs and the dashboard
use the same functions.  Colour and axis ranges come from the recent window of
the run, so an early spike does not flatten a healthy run into "vanished".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from gradscope import Report, hookimpl
from gradscope.judge import effective_thresholds
from gradscope.render import verdict
from gradscope.signals import LayerSignal, activation_fraction, layer_signals

FLAG = "#d62728"
OK = "#1f77b4"
MUTED = "#9aa5b1"
#: Healthy training moves weights by about this fraction per step.
UPDATE_GUIDE = 1e-3
#: Text stays text in SVG, so layer names can be searched and copied.
_STYLE = {"svg.fonttype": "none"}
RECENT = 20
MAX_LABELS = 40


def plain(text: object) -> str:
    """``text`` as matplotlib prints it literally: a ``$`` never starts mathtext (a layer
    named ``w$_$`` would otherwise fail to parse and take every plot down)."""
    return str(text).replace("$", r"\$")


def short(name: str, limit: int = 18) -> str:
    """Abbreviate a qualified module name to its tail so tick labels stay readable
    (returned as plain text, see :func:`plain`)."""
    if len(name) <= limit:
        return plain(name)
    tail = name.split(".")
    text = tail[-1]
    for part in reversed(tail[:-1]):
        if len(part) + len(text) + 1 > limit - 1:
            break
        text = f"{part}.{text}"
    return plain("…" + text[-(limit - 1) :])


def _flagged(report: Report) -> dict[str, str]:
    flagged: dict[str, str] = {}
    for f in report.findings:
        if f.severity == "info":
            continue
        for name in [f.layer, *(f.evidence.get("layers") or [])]:
            if name:
                flagged.setdefault(name, f.kind)
    return flagged


def _recent_median(series: torch.Tensor) -> float:
    finite = series[-RECENT:]
    finite = finite[torch.isfinite(finite)]
    return float(finite.median()) if finite.numel() else math.nan


def _empty(ax: Axes, title: str, text: str) -> None:
    """A panel that says why it has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes, color=MUTED)
    ax.set_title(title)


#: Above this many bars, each bar is drawn as one line of a single collection: a
#: Rectangle per bar takes seconds to lay out for a 1,000-layer model.
MANY_BARS = 150


def _bars(ax: Axes, x: Any, heights: list[float], width: float = 0.8, **style: Any) -> None:
    """``ax.bar``, or for many bars the same bars as one ``vlines`` collection (``log``:
    the axis will be logarithmic, so those lines start below the smallest bar, not at 0)."""
    log = style.pop("log", False)
    if len(heights) <= MANY_BARS:
        ax.bar(x, heights, width=width, **style)
        return
    finite = [h for h in heights if math.isfinite(h) and h > 0]
    bottom = (min(finite) / 100 if finite else 1e-12) if log else 0.0
    colours = style.pop("color", None)
    ax.vlines(
        x,
        bottom,
        [h if math.isfinite(h) else bottom for h in heights],
        colors=colours,
        linewidth=max(0.3, 300 / len(heights)),
        **style,
    )


def _label_layers(ax: Axes, names: list[str]) -> None:
    step = max(1, math.ceil(len(names) / MAX_LABELS))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([short(names[i]) for i in ticks], rotation=90, fontsize=7)


def _guide(report: Report, plugin: str, key: str, fallback: float) -> float:
    """A detector's threshold as it was in force for this report (defaults + overrides)."""
    value = effective_thresholds(report.config).get(plugin, {}).get(key, fallback)
    return float(value)


def draw_gradient_flow(ax: Axes, report: Report, layers: list[LayerSignal]) -> None:
    """Mean |grad| per layer in forward order, log scale, flagged layers in red."""
    flagged = _flagged(report)
    vanish_guide = _guide(report, "vanishing", "depth_ratio", 1e-3)
    names = [s.name for s in layers]
    mean_abs = [_recent_median(s.grad_mean_abs) for s in layers]
    rms = [_recent_median(s.grad_norm) / math.sqrt(max(s.numel, 1)) for s in layers]
    colours = [FLAG if n in flagged else OK for n in names]
    x = list(range(len(layers)))
    _bars(
        ax,
        x,
        [v if math.isfinite(v) and v > 0 else float("nan") for v in mean_abs],
        color=colours,
        alpha=0.8,
        label="mean |grad| (recent)",
        log=True,
    )
    ax.scatter(
        x,
        [v if math.isfinite(v) and v > 0 else float("nan") for v in rms],
        color="black",
        s=10,
        zorder=3,
        label="RMS grad",
    )
    finite = [v for v in mean_abs if math.isfinite(v) and v > 0]
    if finite:
        top = max(finite)
        ax.set_yscale("log")
        ax.axhspan(
            min(min(finite), top * vanish_guide) / 10,
            top * vanish_guide,
            color=FLAG,
            alpha=0.08,
            label=f"< {vanish_guide:g} x largest: vanishing zone",
        )
    ax.set_title("Gradient flow (input on the left)")
    ax.set_ylabel("|grad|")
    _label_layers(ax, names)
    for i, n in enumerate(names):
        if n in flagged and len(names) <= MAX_LABELS:
            ax.get_xticklabels()[i].set_color(FLAG)
    ax.legend(fontsize=7, loc="best")


def draw_grad_heatmap(ax: Axes, report: Report, layers: list[LayerSignal]) -> None:
    """Layer x step heat map of gradient norms, non-finite cells in black."""
    if not layers:
        return
    steps = report.history.steps if report.history else []
    grid = torch.stack([s.grad_norm for s in layers])  # (L, T)
    nonfinite = torch.isinf(grid) | (
        torch.isnan(grid) & (torch.stack([s.nonfinite for s in layers]) > 0)
    )
    values = grid.clone()
    values[~torch.isfinite(values) | (values <= 0)] = float("nan")
    recent = values[:, -RECENT:]
    finite = recent[torch.isfinite(recent)]
    if finite.numel() == 0:
        finite = values[torch.isfinite(values)]
    vmin = float(finite.min()) if finite.numel() else 1e-8
    vmax = float(finite.max()) if finite.numel() else 1.0
    vmax = max(vmax, vmin * 10)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = ax.imshow(
        values.numpy(),
        aspect="auto",
        cmap=cmap,
        norm=LogNorm(vmin=vmin, vmax=vmax),
        interpolation="nearest",
    )
    if bool(nonfinite.any()):
        ys, xs = torch.nonzero(nonfinite, as_tuple=True)
        ax.scatter(xs.numpy(), ys.numpy(), marker="s", color="black", s=12, label="non-finite")
        ax.legend(fontsize=7, loc="upper right")
    ax.figure.colorbar(image, ax=ax, label="||grad|| (log)")
    ax.set_title("Gradient norm per layer and step")
    ax.set_xlabel("recorded step")
    n = len(layers)
    stride = max(1, math.ceil(n / MAX_LABELS))
    ax.set_yticks(list(range(0, n, stride)))
    ax.set_yticklabels([short(layers[i].name) for i in range(0, n, stride)], fontsize=7)
    if steps:
        ticks = list(range(0, len(steps), max(1, len(steps) // 8)))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(steps[i]) for i in ticks], fontsize=7)


def draw_update_ratio(ax: Axes, report: Report, layers: list[LayerSignal]) -> None:
    """Update-to-weight ratio per layer over steps, with the ~1e-3 guide.

    Up to 8 layers get a line each; beyond that the median and 10-90% band over layers
    are drawn, with flagged layers on top in red.
    """
    steps = report.history.steps if report.history else []
    flagged = _flagged(report)
    measured = [s for s in layers if bool(torch.isfinite(s.update_ratio).any())]
    if not measured:
        _empty(ax, "Update / weight per step", "no optimizer: update sizes not measured")
        return
    if len(measured) <= 8:
        for s in measured:
            ax.plot(
                steps,
                s.update_ratio.numpy(),
                lw=1.5 if s.name in flagged else 0.8,
                color=FLAG if s.name in flagged else None,
                label=short(s.name),
            )
    else:
        grid = torch.stack([s.update_ratio for s in measured])
        grid = torch.where(torch.isfinite(grid) & (grid > 0), grid, float("nan"))
        low, mid, high = (torch.nanquantile(grid, q, dim=0).numpy() for q in (0.1, 0.5, 0.9))
        ax.fill_between(steps, low, high, color=OK, alpha=0.25, label="10-90% of layers")
        ax.plot(steps, mid, color=OK, lw=1.5, label="median layer")
        for s in [s for s in measured if s.name in flagged][:10]:
            ax.plot(steps, s.update_ratio.numpy(), color=FLAG, lw=0.8)
    ax.set_yscale("log")
    ax.axhline(UPDATE_GUIDE, color="black", ls="--", lw=1, label="~1e-3 guide")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("Update / weight per step")
    ax.set_xlabel("step")


def draw_gan_balance(ax: Axes, report: Report, layers: list[LayerSignal]) -> bool:
    """Generator vs discriminator gradient norm over steps; False when the model is no GAN."""
    parts: dict[str, list[LayerSignal]] = {"generator": [], "discriminator": []}
    for s in layers:
        top = s.name.split(".")[0].lower()
        for part in parts:
            if top.startswith(part[:3]):
                parts[part].append(s)
    if not (parts["generator"] and parts["discriminator"]):
        return False
    steps = report.history.steps if report.history else []
    colours = {"generator": "#2ca02c", "discriminator": "#9467bd"}
    for part, members in parts.items():
        norm = torch.stack([m.grad_norm for m in members]).square().sum(dim=0).sqrt()
        ax.plot(steps, norm.numpy(), color=colours[part], lw=1.5, label=f"{part} ||grad||")
    ax.set_yscale("log")
    ax.set_title("GAN balance: generator vs discriminator gradients")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    return True


def draw_activation_health(ax: Axes, report: Report) -> None:
    """Zero fraction of ReLU outputs and saturated fraction of sigmoid/tanh outputs."""
    dead_guide = _guide(report, "dead_relu", "warn_fraction", 0.4)
    saturation_guide = _guide(report, "saturation", "warn_fraction", 0.5)
    history = report.history
    if history is None or not history.records:
        return
    zeros = activation_fraction(history, "zeros", RECENT)
    saturated = activation_fraction(history, "saturated", RECENT)
    order = [
        j
        for j in history.module_order
        if history.module_types[j]
        in ("ReLU", "ReLU6", "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid")
    ]
    if not order:
        _empty(ax, "Activation health", "no activation modules to measure")
        return
    names = [history.module_names[j] for j in order]
    zero_frac = [zeros.get(n, float("nan")) for n in names]
    sat_frac = [saturated.get(n, float("nan")) for n in names]
    dead, units = history.act_series("dead_units"), history.act_series("units")  # once
    dead_frac = [_dead_fraction(dead[:, j], units[:, j]) for j in order]
    x = torch.arange(len(order)).numpy()
    width = 0.28
    _bars(ax, x - width, zero_frac, width, color=OK, label="zero fraction of outputs (ReLU)")
    _bars(ax, x, dead_frac, width, color=FLAG, label="dead units (ReLU)")
    _bars(
        ax, x + width, sat_frac, width, color="#ff7f0e", label="saturated fraction (sigmoid/tanh)"
    )
    if len(names) <= 24:  # the numbers, so a 0% bar is seen as 0%, not as missing
        for xi, values in zip(x, zip(zero_frac, dead_frac, sat_frac, strict=True), strict=True):
            for offset, value in zip((-width, 0.0, width), values, strict=True):
                if math.isfinite(value):
                    ax.text(xi + offset, value + 0.01, f"{value:.0%}", ha="center", fontsize=6)
    ax.axhline(dead_guide, color=FLAG, ls="--", lw=1, label=f"{dead_guide:.0%} dead units")
    ax.axhline(
        saturation_guide, color="#ff7f0e", ls=":", lw=1, label=f"{saturation_guide:.0%} saturated"
    )
    ax.set_ylim(0, 1.05)
    ax.set_title("Activation health (recent)")
    _label_layers(ax, names)
    ax.legend(fontsize=7)


def _dead_fraction(dead: torch.Tensor, units: torch.Tensor) -> float:
    """One module's dead units over its units, at the last step that measured them
    (``dead`` and ``units`` are its columns of the history's series)."""
    measured = torch.nonzero(torch.isfinite(dead) & (units > 0)).flatten()
    if measured.numel() == 0:
        return float("nan")
    k = int(measured[-1])
    return float(dead[k] / units[k])


def draw_loss(ax: Axes, report: Report) -> None:
    """The logged loss, with the step of the first finding marked."""
    history = report.history
    if history is None or not history.records:
        return
    losses = history.losses()
    steps = history.steps
    ax.plot(steps, losses.numpy(), color="black", lw=1.2)
    first = [f.step for f in report.findings if f.step is not None and f.severity != "info"]
    if first:
        ax.axvline(
            min(first), color=FLAG, ls="--", lw=1, label=f"first finding (step {min(first)})"
        )
        ax.legend(fontsize=7)
    finite = losses[torch.isfinite(losses)]
    if (
        finite.numel()
        and float(finite.min()) > 0
        and float(finite.max()) / float(finite.min()) > 100
    ):
        ax.set_yscale("log")
    ax.set_title("Loss")
    ax.set_xlabel("step")


def _save(fig: Figure, path: Path, formats: list[str]) -> list[Path]:
    written = []
    with matplotlib.rc_context(_STYLE):
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            fig.savefig(target, dpi=110, metadata=_METADATA.get(fmt))
            written.append(target)
    return written


def _figure(size: tuple[float, float], rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    """A Figure of its own (no pyplot, no global state) and its axes."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols)


#: No creation dates or tool versions in the files, so the same report gives the same bytes.
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def render(report: Report, outdir: Path, formats: list[str] | None = None) -> list[Path]:
    """Write the single views and the one-page dashboard; returns their paths."""
    layers = layer_signals(report.history) if report.history is not None else []
    n = len(layers)
    wide = max(8.0, min(30.0, 0.12 * n + 6))
    written = []
    views = [
        ("gradient_flow.png", (wide, 4.5), lambda ax: draw_gradient_flow(ax, report, layers)),
        (
            "grad_heatmap.png",
            (10, max(4.0, min(30.0, 0.12 * n + 2))),
            lambda ax: draw_grad_heatmap(ax, report, layers),
        ),
        ("update_ratio.png", (8, 4.5), lambda ax: draw_update_ratio(ax, report, layers)),
        ("activation_health.png", (wide, 4.5), lambda ax: draw_activation_health(ax, report)),
        ("loss.png", (7, 4), lambda ax: draw_loss(ax, report)),
    ]
    formats = [f for f in (formats or ["png"]) if f in ("png", "svg")] or ["png"]
    for filename, size, draw in views:
        fig, ax = _figure(size)
        draw(ax)
        written.extend(_save(fig, outdir / filename, formats))
    fig, ax = _figure((8, 4.5))
    if draw_gan_balance(ax, report, layers):
        written.extend(_save(fig, outdir / "gan_balance.png", formats))
    fig, axes = _figure((18, 9.5), 2, 3)
    draw_gradient_flow(axes[0, 0], report, layers)
    draw_grad_heatmap(axes[0, 1], report, layers)
    draw_loss(axes[0, 2], report)
    draw_update_ratio(axes[1, 0], report, layers)
    draw_activation_health(axes[1, 1], report)
    _draw_findings_text(axes[1, 2], report)
    fig.suptitle(
        f"gradscope: {plain(report.model_name)} — {verdict(report)}",
        fontsize=15,
        color=FLAG if report.findings else "black",
    )
    written.extend(_save(fig, outdir / "dashboard.png", formats))
    return written


def _draw_findings_text(ax: Axes, report: Report) -> None:
    ax.axis("off")
    lines = []
    for f in report.findings[:6]:
        fix = f.suggestions[0].title if f.suggestions else ""
        lines.append(plain(f"[{f.severity}] {f.kind} in {f.layer or '-'} (step {f.step})"))
        if fix:
            lines.append(plain(f"    fix: {fix}"))
    if not lines:
        lines = ["No findings: gradients, updates and", "activations look healthy."]
    ax.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        transform=ax.transAxes,
        wrap=True,
    )
    ax.set_title("Findings")


@hookimpl
def gradscope_render(report: Report, outdir: Path, options: dict) -> list[Path]:
    """Gradient flow, gradient heat map, update ratios, activation health, loss, dashboard."""
    return render(report, Path(outdir), options.get("formats"))
