"""The matplotlib renderer: valid PNGs, flagged layers visible, JSON-loaded reports alike."""

from __future__ import annotations

import torch
from helpers import batch
from torch import nn

import gradscope
from gradscope import Report, plugins
from gradscope.models import builtin_specs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED = {
    "gradient_flow.png",
    "grad_heatmap.png",
    "update_ratio.png",
    "activation_health.png",
    "loss.png",
    "dashboard.png",
}


def _sigmoid_report() -> Report:
    spec = builtin_specs()["deep_sigmoid_mlp"]
    batches = [spec.example_batch(64, seed=s) for s in range(4)]
    return gradscope.diagnose(
        spec.factory(), batches, spec.loss_fn, steps=12, lr=0.05, name="deep_sigmoid_mlp"
    )


def test_plot_writes_every_view_as_a_valid_png_and_an_index_page(tmp_path):
    paths = _sigmoid_report().plot(tmp_path)
    assert {p.name for p in paths} == EXPECTED | {"report.html"}
    for path in (p for p in paths if p.suffix == ".png"):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path
        assert len(data) > 5_000, path


def test_a_report_loaded_from_json_draws_the_same_pictures(tmp_path):
    live = _sigmoid_report()
    loaded = Report.from_json(live.to_json())
    live.plot(tmp_path / "live")
    loaded.plot(tmp_path / "loaded")
    for name in EXPECTED:
        assert (tmp_path / "live" / name).read_bytes() == (
            tmp_path / "loaded" / name
        ).read_bytes(), name


def test_two_hundred_layers_render(tmp_path):
    deep = nn.Sequential(
        *[nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(100)], nn.Linear(6, 3)
    )
    report = gradscope.diagnose(deep, batch(), nn.functional.cross_entropy, steps=3)
    paths = report.plot(tmp_path)
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == PNG_MAGIC
    assert len(report.history.module_names) == 201
    assert {p.name for p in paths} == EXPECTED | {"report.html"}


def test_nonfinite_cells_and_failing_renderers_do_not_break_plotting(tmp_path):
    class BrokenRenderer:
        @gradscope.hookimpl
        def gradscope_render(self, report, outdir):
            raise RuntimeError("renderer bug")

    model = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    report = gradscope.diagnose(model, batch(), nn.functional.cross_entropy, steps=2)
    with plugins.registered(BrokenRenderer(), name="broken_renderer"):
        paths = report.plot(tmp_path)
    assert {p.name for p in paths} == EXPECTED | {"report.html"}
    assert report.plugin_errors[-1]["plugin"] == "broken_renderer"


def test_svg_and_html_carry_the_flagged_layer_names_as_text(tmp_path):
    report = _sigmoid_report()
    paths = report.plot(tmp_path, formats=("png", "svg"))
    svg = (tmp_path / "gradient_flow.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    flagged = report.findings[0].evidence["layers"]
    for name in flagged:
        assert f">{name}</text>" in svg
    assert {p.suffix for p in paths} == {".png", ".svg", ".html"}
    html_path = report.save_html(tmp_path / "out" / "report.html")
    page = html_path.read_text()
    assert page.startswith("<!doctype html>")
    assert "vanishing_gradient</a>" in page
    assert "<code>0</code>" in page  # the flagged layer in the findings table
    assert page.count('src="data:image/png;base64,') == len(EXPECTED)
    assert "Replace Sigmoid with ReLU" in page
    assert "nn.init.kaiming_normal_(p, nonlinearity=&quot;relu&quot;)" in page


def test_html_escapes_what_it_shows(tmp_path):
    report = Report(
        findings=[
            gradscope.Finding(
                kind="x",
                layer="<script>alert(1)</script>",
                severity="warning",
                step=0,
                message="a < b & c",
            )
        ]
    )
    page = report.save_html(tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
