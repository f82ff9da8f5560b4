"""The house rules: no import cycles, short functions, rooms named in docs/architecture.md
exist, rendering leaves global state alone, a saved run can be judged again."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import matplotlib
import pytest
import torch
from click.testing import CliRunner

import gradscope
from gradscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gradscope": ROOT / "gradscope", "gradscope_plugins": ROOT / "plugins"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module ``name`` imports, anywhere in the file (TYPE_CHECKING included).

    ``from package import submodule`` depends on the submodule, not on the package's
    ``__init__``; ``from package import name`` depends on the package.
    """
    deps = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            deps.update(subs)
            if len(subs) < len(node.names):
                deps.add(base)
    return {d for d in deps if d in modules and d != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_projects_modules():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_longer_than_80_lines():
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert long == []


def test_every_file_the_architecture_doc_names_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    folders = "gradscope|plugins|scenarios|tests|benchmarks|docs"
    named = set(re.findall(rf"`((?:{folders})/[\w/.]+)`", text))
    assert len(named) >= 15
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []


def _deep_sigmoid() -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for _ in range(8):
        layers += [torch.nn.Linear(16, 16), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    fonttype = matplotlib.rcParams["svg.fonttype"]
    matplotlib.use("svg")
    try:
        model = _deep_sigmoid()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _data()
        with gradscope.watch(model, optimizer=opt) as scope:
            for _ in range(6):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                scope.log_loss(loss)
                loss.backward()
                opt.step()
        written = scope.report().plot(tmp_path)
        assert (tmp_path / "dashboard.png").exists() and written
        assert matplotlib.get_backend() == "svg"
        assert matplotlib.rcParams["svg.fonttype"] == fonttype
    finally:
        matplotlib.use(before)


@pytest.fixture
def saved_deep_sigmoid_run(tmp_path) -> Path:
    report = gradscope.diagnose(
        _deep_sigmoid(), _data(), torch.nn.functional.cross_entropy, steps=20
    )
    assert "vanishing_gradient" in report.kinds()
    path = tmp_path / "run.json"
    path.write_text(report.to_json())
    return path


def test_a_saved_run_is_judged_again_with_other_thresholds(saved_deep_sigmoid_run):
    runner = CliRunner()
    again = runner.invoke(main, ["report", str(saved_deep_sigmoid_run), "--json"])
    assert "vanishing_gradient" in again.output
    relaxed = runner.invoke(
        main,
        ["report", str(saved_deep_sigmoid_run), "--json", "--set", "vanishing.depth_ratio=1e-30"],
    )
    judged = gradscope.Report.from_json(relaxed.output)
    assert "vanishing_gradient" not in judged.kinds()
    assert judged.config["vanishing"]["depth_ratio"] == 1e-30


def test_rejudging_with_an_unknown_key_is_one_sentence_and_exit_2(saved_deep_sigmoid_run):
    result = CliRunner().invoke(
        main, ["report", str(saved_deep_sigmoid_run), "--set", "vanishing.depth_ration=1e-4"]
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: Unknown threshold(s) depth_ration for plugin 'vanishing'; it knows "
        "constant_loss, constant_output, depth_ratio, depth_severe, grown_weights, "
        "guessing_discriminator, learned, model_time_ratio, plateau, severe_ratio, stall, "
        "starved_score, stuck_ratio, through_time, time_ratio, time_stall, window."
    )


def test_check_exits_2_when_every_detector_is_filtered_out(tmp_path, monkeypatch):
    from gradscope.models import builtin_specs

    path = tmp_path / "fnn.pt"
    torch.save(builtin_specs()["fnn"].factory().state_dict(), path)
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "plots,html_report,reference_models")
    gradscope.plugins.reset_plugin_manager()
    result = CliRunner().invoke(main, ["check", str(path), "--model", "fnn", "--steps", "4"])
    assert result.exit_code == 2
    assert "no detector plugin is loaded" in result.output
