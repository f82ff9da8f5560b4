"""Hostile layer and model names: printed literally, plotted as plain text, quoted in
valid Python, embedded in the HTML as JSON that parses."""

from __future__ import annotations

import ast
import json
import re
from html.parser import HTMLParser

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.modelinfo import LayerInfo, ModelInfo
from gradscope.report import Finding

torch.set_num_threads(1)

HOSTILE = [
    "w$_$",
    'a"b',
    "[bold red]x[/bold red]",
    "[/]",
    "\x1b[31mred\x1b[0m",
    "class",
    "it's",
    "new\nline",
]


class Chain(nn.Module):
    """Layers called in registration order (a Sequential that accepts any child name)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def hostile_sigmoid_mlp() -> nn.Module:
    """A deep sigmoid MLP (its early layers' gradients vanish) with hostile names."""
    torch.manual_seed(0)
    model = type("[/]Net\x1b[2J", (Chain,), {})()
    for k in range(8):
        name = HOSTILE[k] if k < len(HOSTILE) else f"lin{k}"
        model.add_module(name, nn.Linear(32, 32))
        model.add_module(f"{name}.act".replace(".", "·"), nn.Sigmoid())
    block = nn.Module()
    block.add_module("1", Chain())
    block.get_submodule("1").add_module("conv2", nn.Linear(32, 4))
    model.add_module("layer1", block)
    model.forward = lambda x: block.get_submodule("1").conv2(Chain.forward(_Head(model), x))
    return model


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.parts = [m for name, m in model.named_children() if name != "layer1"]

    def children(self):  # type: ignore[override]
        return iter(self.parts)


@pytest.fixture(scope="module")
def report():
    model = hostile_sigmoid_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    with gradscope.watch(model, optimizer=opt) as scope:
        for _ in range(12):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            scope.log_loss(loss)
            loss.backward()
            opt.step()
    result = scope.report()
    assert result.findings, "the hostile MLP should have findings to print"
    return result


def test_the_terminal_shows_names_literally_and_gets_no_escape_bytes(report, tmp_path):
    path = tmp_path / "run.json"
    path.write_text(report.to_json())
    result = CliRunner().invoke(main, ["report", str(path), "--fail-on", "error"])
    assert result.exit_code in (0, 1), result.output
    assert "\x1b" not in result.output
    assert "\\x1b[2J" in result.output  # the model name's ESC, shown as text
    layers = " ".join(f.layer or "" for f in report.findings)
    for name in ("[bold red]x[/bold red]", "[/]"):
        if name in layers:
            assert name in result.output


def test_every_suggestion_of_the_report_parses(report):
    snippets = [s.code for f in report.findings for s in f.suggestions]
    assert snippets
    for code in snippets:
        ast.parse(code)


def _builders():
    from gradscope_plugins import fix_builders as fixes

    return [
        obj
        for name, obj in vars(fixes).items()
        if callable(obj)
        and not name.startswith("_")
        and getattr(obj, "__annotations__", {}).get("return") in ("Suggestion", fixes.Suggestion)
    ]


@pytest.mark.parametrize("name", [*HOSTILE, "layer1.1.conv2", "gen.0", "0"])
def test_every_builder_makes_python_that_parses_for_a_hostile_name(name):
    roles = ["weight", "sigmoid", "tanh", "vanilla_rnn", "relu"]
    layers = [
        LayerInfo(
            name=f"{name}{k}" if k else name,
            type=f"T{role}",
            role=role,
            params=[f"{name}.weight", f"{name}.bias"],
            size={"out_features": 4, "hidden_size": 4, "input_size": 4},
            output_shape=(8, 20, 4),
        )
        for k, role in enumerate(roles)
    ]
    for root in ("Module", "Sequential"):
        info = ModelInfo(model_name="M", layers=layers, root_type=root, lr=0.1)
        finding = Finding(
            kind="vanishing_gradient",
            layer=name,
            severity="error",
            step=3,
            message="m",
            evidence={"layers": [name], "parameters": [f"{name}.weight"], "culprit": name,
                      "where": "forward", "sequence_length": 20},
        )
        builders = _builders()
        assert len(builders) >= 12
        for build in builders:
            code = build(finding, info).code
            try:
                ast.parse(code)
            except SyntaxError as exc:  # pragma: no cover - the message names the builder
                pytest.fail(f"{build.__name__} for {name!r}: {exc}\n{code}")


@pytest.mark.parametrize("name", ["layer1.1.conv2", 'a"b', "class", "w$_$"])
def test_module_references_reach_the_module(name):
    from gradscope_plugins.fix_builders import _ref

    root = nn.Module()
    parent = root
    parts = name.split(".")
    for part in parts[:-1]:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    leaf = nn.Linear(2, 2)
    parent.add_module(parts[-1], leaf)
    info = ModelInfo(model_name="Root", layers=[])
    ref = _ref(info, name)
    assert eval(ref, {"model": root}) is leaf  # noqa: S307 - the generated reference itself
    if name == "layer1.1.conv2":
        assert ref == "model.get_submodule('layer1.1.conv2')"


class _ScriptText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "script" and ("id", "report-data") in attrs

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def test_plots_render_names_as_plain_text_and_the_html_embeds_json_that_parses(
    report, tmp_path
):
    report.model_name = '</script><script>alert("x")</script>&amp;$_$'
    html = report.save_html(tmp_path / "r.html").read_text()  # renders every plot
    assert report.plugin_errors == []  # `w$_$` is not mathtext any more
    assert html.count("data:image/png;base64,") >= 2
    assert "<script>alert" not in html
    parser = _ScriptText()
    parser.feed(html)
    data = json.loads(parser.text)
    assert data["model"] == '</script><script>alert("x")</script>&amp;$_$'
    assert re.search(r'<script type="application/json" id="report-data">[^<]*</script>', html)
