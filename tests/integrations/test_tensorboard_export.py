"""The TensorBoard exporter: scalars and findings written, then read back from the event file."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import gradscope  # noqa: E402
from gradscope import Report, plugins  # noqa: E402
from gradscope.reference import get_spec  # noqa: E402
from gradscope.signals import layer_signals  # noqa: E402
from gradscope_plugins.tensorboard_export import export  # noqa: E402

STEPS = 10


def diagnosed(name: str) -> Report:
    spec = get_spec(name)
    torch.manual_seed(0)
    return gradscope.diagnose(spec.factory(), spec.example_batch(), spec.loss_fn, steps=STEPS)


def read_back(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def text(events: EventAccumulator, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.fixture(scope="module")
def vanishing() -> Report:
    return diagnosed("deep_sigmoid_mlp")


def test_every_layer_statistic_and_the_finding_are_in_the_event_file(vanishing, tmp_path):
    written = export(vanishing, tmp_path)

    assert len(written) == 1 and written[0].name.startswith("events.out.tfevents")
    events = read_back(tmp_path)
    scalars = set(events.Tags()["scalars"])
    for signal in layer_signals(vanishing.history):
        grads = events.Scalars(f"gradscope/grad_norm/{signal.name}")
        assert [e.step for e in grads] == list(range(STEPS))
        for event, value in zip(grads, signal.grad_norm.tolist(), strict=True):
            assert math.isclose(event.value, value, rel_tol=1e-6)
        for statistic in ("relative_grad", "update_ratio", "param_norm"):
            assert f"gradscope/{statistic}/{signal.name}" in scalars
    assert [e.step for e in events.Scalars("gradscope/loss")] == list(range(STEPS))
    assert "gradscope/saturated_fraction/1" in scalars  # the first Sigmoid

    findings = text(events, "gradscope/findings")
    assert "**[error] vanishing_gradient** in `0` (from step 0)" in findings
    assert "Fix (use_relu): Replace Sigmoid with ReLU" in findings
    assert "1 error" in text(events, "gradscope/summary")


def test_a_healthy_report_says_so(tmp_path):
    export(diagnosed("deep_relu_mlp"), tmp_path)

    findings = text(read_back(tmp_path), "gradscope/findings")
    assert findings.startswith("No findings")


def test_report_plot_writes_tensorboard_only_when_asked(vanishing, tmp_path, monkeypatch):
    # Only this renderer loads (GRADSCOPE_PLUGINS), so the PNG renderers stay out.
    monkeypatch.setenv("GRADSCOPE_PLUGINS", "tensorboard_export")
    plugins.reset_plugin_manager()

    plain = vanishing.plot(tmp_path / "plain")
    asked = vanishing.plot(tmp_path / "asked", formats=("png", "tensorboard"))

    assert plain == [] and not (tmp_path / "plain" / "tensorboard").exists()
    assert [p.parent for p in asked] == [tmp_path / "asked" / "tensorboard"]
    assert asked[0].name.startswith("events.out.tfevents")
    assert "gradscope/grad_norm/0" in read_back(asked[0].parent).Tags()["scalars"]
    assert vanishing.plugin_errors == []


def test_a_report_loaded_from_json_exports_the_same_scalars(vanishing, tmp_path):
    export(vanishing, tmp_path / "live")
    export(Report.from_json(vanishing.to_json()), tmp_path / "loaded")

    live, loaded = read_back(tmp_path / "live"), read_back(tmp_path / "loaded")
    assert sorted(live.Tags()["scalars"]) == sorted(loaded.Tags()["scalars"])
    tag = "gradscope/update_ratio/16"
    assert [e.value for e in live.Scalars(tag)] == [e.value for e in loaded.Scalars(tag)]
