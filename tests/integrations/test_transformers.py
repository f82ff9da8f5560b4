"""GradscopeCallback for the Hugging Face Trainer: findings on its logger, a report on disk."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from gradscope import GradscopeError  # noqa: E402
from gradscope.integrations.transformers import GradscopeCallback  # noqa: E402
from gradscope.models.data import classification_batch  # noqa: E402

STEPS = 10


class MLPConfig(transformers.PretrainedConfig):
    model_type = "gradscope_test_mlp"

    def __init__(self, depth: int = 8, activation: str = "sigmoid", **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.activation = activation


class MLPClassifier(transformers.PreTrainedModel):
    """A Hugging Face model: ``depth`` Linear+activation layers, loss in its output."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[config.activation]
        layers, width = [], 32
        for _ in range(config.depth):
            layers += [nn.Linear(width, 64), act()]
            width = 64
        self.net = nn.Sequential(*layers, nn.Linear(width, 4))
        if config.activation == "relu":
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)

    def forward(self, x=None, labels=None):
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class Features(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.x, self.y = classification_batch(n, 32, 4, seed=0)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


class Tokens(torch.utils.data.Dataset):
    """Random token ids; the label is the parity of the first token."""

    def __init__(self, n: int):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 16), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i, 0] % 2}


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def trainer_log():
    """Warnings the Trainer's logger (``transformers.trainer``) emitted during the test."""
    handler = Captured()
    logger = logging.getLogger("transformers.trainer")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def train(model, dataset, out: Path, callback: GradscopeCallback, **overrides):
    args = {
        "output_dir": str(out),
        "max_steps": STEPS,
        "per_device_train_batch_size": 16,
        "learning_rate": 0.05,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 5,
        "seed": 0,
        "disable_tqdm": True,
        **overrides,
    }
    trainer = transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**args),
        train_dataset=dataset,
        callbacks=[callback],
    )
    trainer.train()
    return trainer


def gradscope_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "gradscope/ok" in entry]


def test_vanishing_sigmoid_stack_is_logged_and_saved(tmp_path, trainer_log):
    torch.manual_seed(0)
    callback = GradscopeCallback()
    trainer = train(MLPClassifier(MLPConfig()), Features(STEPS * 16), tmp_path, callback)

    assert any("vanishing_gradient in net.0" in m for m in trainer_log), trainer_log
    logged = gradscope_logs(trainer)[-1]
    assert logged["gradscope/errors"] + logged["gradscope/warnings"] == 1.0
    outdir = tmp_path / "gradscope"
    assert callback.saved == outdir
    saved = json.loads((outdir / "report.json").read_text())
    assert [(f["kind"], f["layer"]) for f in saved["findings"]] == [("vanishing_gradient", "net.0")]
    assert saved["history"]["recorded"] == STEPS
    assert (outdir / "dashboard.png").stat().st_size > 10_000


def test_healthy_custom_model_gets_no_finding(tmp_path, trainer_log):
    torch.manual_seed(0)
    callback = GradscopeCallback(plot=False)
    trainer = train(
        MLPClassifier(MLPConfig(activation="relu")), Features(STEPS * 16), tmp_path, callback
    )

    assert callback.report.findings == []
    assert not any(m.startswith("gradscope") for m in trainer_log), trainer_log
    assert gradscope_logs(trainer)[-1]["gradscope/ok"] == 1.0
    history = callback.report.history
    assert history.recorded == STEPS
    assert history.losses().isfinite().all()  # read from outputs.loss


def test_healthy_tiny_bert_gets_no_finding(tmp_path, trainer_log):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    callback = GradscopeCallback(plot=False)
    trainer = train(
        model, Tokens(STEPS * 16), tmp_path, callback, learning_rate=1e-3, optim="adamw_torch"
    )

    # Ten steps cannot show a stall (the loss 0.693 -> 0.684; it reaches 0.07 by step 40):
    # the fresh classifier's 700x larger relative gradient is at most an info.
    assert callback.report.at_least("warning") == []
    infos = [f.message for f in callback.report.findings]
    assert all("too few to tell whether this stops training" in m for m in infos), infos
    assert not any(m.startswith("gradscope") for m in trainer_log), trainer_log
    assert gradscope_logs(trainer)[-1]["gradscope/ok"] == 1.0
    history = callback.report.history
    assert history.recorded == STEPS
    assert history.losses().isfinite().all()  # read from outputs.loss


def test_gradient_accumulation_records_optimizer_steps_only(tmp_path):
    torch.manual_seed(0)
    callback = GradscopeCallback(plot=False)
    train(
        MLPClassifier(MLPConfig(depth=3, activation="relu")),
        Features(2 * STEPS * 8),
        tmp_path,
        callback,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
    )

    assert callback.report.history.recorded == STEPS
    assert callback.report.findings == []


def test_fail_on_stops_after_the_epoch_raises_and_removes_the_hooks(tmp_path, hooks_left):
    torch.manual_seed(0)
    model = MLPClassifier(MLPConfig())
    callback = GradscopeCallback(fail_on="warning", plot=False)

    with pytest.raises(GradscopeError, match=r"\[(error|warning)\] vanishing_gradient in net\.0"):
        # Two epochs of 10 steps (a stall needs 10 logged losses): the finding stops
        # training after the first one.
        train(model, Features(STEPS * 16), tmp_path, callback, max_steps=2 * STEPS)

    assert callback.report.history.recorded == STEPS
    assert (tmp_path / "gradscope" / "report.json").exists()
    assert hooks_left(model, callback.scope.optimizer) == 0


def test_missing_transformers_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "gradscope.integrations.transformers", raising=False)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        import gradscope.integrations.transformers  # noqa: F401
