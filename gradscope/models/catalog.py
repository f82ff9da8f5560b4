"""The reference models of the seed notes and their faulty twins, as a table.

Each :class:`ModelSpec` declares a factory, an example batch (any batch size), the loss it
trains with and the task.  A faulty twin names the finding it should show (``problem``) and
the spec of its fix (``fixed_by``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradscope.models import networks
from gradscope.models.data import (
    classification_batch,
    gan_batch,
    image_batch,
    regression_batch,
    sequence_batch,
    token_batch,
)
from gradscope.models.spec import ModelSpec
from gradscope.models.training import gan_step, supervised_step


def _ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


def _features(dim: int, classes: int) -> Callable[[int, int], tuple[Any, Any]]:
    return lambda n, seed: classification_batch(n, dim, classes, seed)


def _sgd(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr)


def _adam(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda params: torch.optim.Adam(params, lr=lr)


def _gan_optimizer(params: Any) -> torch.optim.Optimizer:
    """SGD with the discriminator learning 20x faster than the generator (it wins early)."""
    params = list(params)
    generator, discriminator = params[:2], params[2:]
    return torch.optim.SGD(
        [{"params": generator, "lr": 0.05}, {"params": discriminator, "lr": 1.0}]
    )


def _nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.nll_loss(output, target)


def _bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy(output, target)


_FEATURES = _features(32, 4)
_IMAGES = lambda n, seed: image_batch(n, seed)  # noqa: E731
_SHORT_SEQ = lambda n, seed: sequence_batch(n, 20, seed)  # noqa: E731
_LONG_SEQ = lambda n, seed: sequence_batch(n, 50, seed, memory=True)  # noqa: E731
_RECENT_SEQ = lambda n, seed: sequence_batch(n, 50, seed, recent=5)  # noqa: E731

#: The built-in reference models and faulty twins.
SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="fnn",
        factory=networks.FNN,
        batch=lambda n, seed: regression_batch(n, 10, seed),
        loss_fn=_mse,
        loss_name="mse",
        task="regression: Linear(10,20)-ReLU-Linear(20,1), Kaiming-uniform init",
    ),
    ModelSpec(
        name="cnn",
        factory=networks.CNN,
        batch=_IMAGES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="image classification: Conv2d(1,32,3,p=1)-ReLU-MaxPool-Linear(32*14*14,10)",
        optimizer=_sgd(0.01),
    ),
    ModelSpec(
        name="cnn_small",
        factory=networks.SmallCNN,
        batch=_IMAGES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="image classification: Conv2d(1,16,3)-ReLU-MaxPool-Linear(16*13*13,10)",
        optimizer=_sgd(0.01),
    ),
    ModelSpec(
        name="rnn",
        factory=networks.RNNNet,
        batch=_SHORT_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task="sequence regression: nn.RNN(10,20,batch_first) + Linear on the last step",
        optimizer=_sgd(0.05),
    ),
    ModelSpec(
        name="lstm",
        factory=networks.LSTMNet,
        batch=_SHORT_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task="sequence regression: nn.LSTM(10,20,batch_first) + Linear on the last step",
        optimizer=_sgd(0.05),
    ),
    ModelSpec(
        name="transformer",
        factory=networks.TransformerClassifier,
        batch=lambda n, seed: token_batch(n, seed),
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="text classification: Embedding + positions + 2-layer TransformerEncoder",
        optimizer=_adam(1e-3),
        batch_size=32,
    ),
    ModelSpec(
        name="gan",
        factory=networks.GAN,
        batch=lambda n, seed: gan_batch(n, seed),
        loss_fn=_bce,
        loss_name="bce",
        task="GAN: Generator Linear(100,256)+tanh, Discriminator Linear(256,1)+sigmoid",
        optimizer=_gan_optimizer,
        demo_steps=60,
        step=gan_step(saturating=False),
    ),
    # -- faulty twins and their fixes ------------------------------------------
    ModelSpec(
        name="deep_sigmoid_mlp",
        factory=networks.deep_sigmoid_mlp,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="classification with 8 Linear+Sigmoid layers: gradients vanish toward the input",
        problem="vanishing_gradient",
        fixed_by="deep_relu_mlp",
        fix="ReLU instead of Sigmoid, with Kaiming init",
    ),
    ModelSpec(
        name="deep_relu_mlp",
        factory=networks.deep_relu_mlp,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="the fix of deep_sigmoid_mlp: ReLU and Kaiming init",
    ),
    ModelSpec(
        name="deep_tanh_tiny_init",
        factory=networks.deep_tanh_tiny_init,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="6 tanh layers with weights 100x too small: gradients vanish toward the input",
        problem="vanishing_gradient",
        fixed_by="deep_tanh_xavier",
        fix="Xavier init",
    ),
    ModelSpec(
        name="deep_tanh_xavier",
        factory=networks.deep_tanh_xavier,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="the fix of deep_tanh_tiny_init: Xavier init",
    ),
    ModelSpec(
        name="vanilla_rnn_long",
        factory=lambda: networks.RNNNet(hidden_size=32),
        batch=_LONG_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task="recall the first of 50 steps with a vanilla RNN: gradients vanish through time",
        optimizer=_adam(3e-3),
        demo_steps=120,
        distinct_batches=1000,
        problem="vanishing_gradient",
        fixed_by="lstm_long",
        fix="an LSTM (forget gates opened with bias 3) instead of the vanilla RNN",
    ),
    ModelSpec(
        name="lstm_long",
        factory=networks.long_memory_lstm,
        batch=_LONG_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task="the fix of vanilla_rnn_long: an LSTM with forget-gate bias 3",
        optimizer=_adam(3e-3),
        demo_steps=120,
        distinct_batches=1000,
    ),
    ModelSpec(
        name="relu_mlp_large_init",
        factory=networks.relu_mlp_large_init,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="ReLU MLP with N(0, 1) weights: activations and gradients explode",
        problem="exploding_gradient",
        fixed_by="relu_mlp_kaiming",
        fix="Kaiming init (and gradient clipping)",
    ),
    ModelSpec(
        name="relu_mlp_kaiming",
        factory=networks.relu_mlp_kaiming,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="the fix of relu_mlp_large_init: Kaiming init",
    ),
    ModelSpec(
        name="exploding_rnn",
        factory=networks.exploding_rnn,
        batch=_RECENT_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task=(
            "mean of the last 5 of 50 steps; a ReLU RNN with recurrent weights 1.5x orthogonal:"
            " gradients explode through time"
        ),
        optimizer=_sgd(0.1),
        problem="exploding_gradient",
        fixed_by="rnn_orthogonal_clipped",
        fix="orthogonal recurrent init and gradient clipping",
    ),
    ModelSpec(
        name="rnn_orthogonal_clipped",
        factory=networks.orthogonal_rnn,
        batch=_RECENT_SEQ,
        loss_fn=_mse,
        loss_name="mse",
        task="the fix of exploding_rnn: orthogonal init, clip_grad_norm_(1.0)",
        optimizer=_sgd(0.1),
        step=supervised_step(_mse, clip=1.0),
    ),
    ModelSpec(
        name="zero_init_mlp",
        factory=networks.zero_init_mlp,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="tanh MLP with all weights zero: every unit of a layer stays the same",
        problem="symmetric_weights",
        fixed_by="random_init_mlp",
        fix="random (Xavier) init",
    ),
    ModelSpec(
        name="random_init_mlp",
        factory=networks.random_init_mlp,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="the fix of zero_init_mlp: Xavier init",
    ),
    ModelSpec(
        name="negative_bias_relu",
        factory=networks.negative_bias_relu,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="ReLU MLP with biases of -5: every unit is dead",
        problem="dead_relu",
        fixed_by="relu_mlp_kaiming",
        fix="zero biases with Kaiming init",
    ),
    ModelSpec(
        name="saturated_sigmoid",
        factory=networks.saturated_sigmoid,
        batch=_FEATURES,
        loss_fn=_ce,
        loss_name="cross_entropy",
        task="sigmoid MLP with weights 20x too large: outputs pinned at 0 and 1",
        problem="saturated_activation",
        fixed_by="deep_relu_mlp",
        fix="ReLU with Kaiming init (or Xavier-scaled sigmoid weights)",
    ),
    ModelSpec(
        name="log_of_zero",
        factory=networks.log_of_zero,
        batch=_FEATURES,
        loss_fn=_nll,
        loss_name="nll",
        task="log(softmax(x)) in two steps: softmax underflows to 0, log gives -inf",
        optimizer=_adam(1e-2),
        problem="nonfinite_gradient",
        fixed_by="stable_log_softmax",
        fix="torch.log_softmax",
    ),
    ModelSpec(
        name="stable_log_softmax",
        factory=networks.stable_log_softmax,
        batch=_FEATURES,
        loss_fn=_nll,
        loss_name="nll",
        task="the fix of log_of_zero: torch.log_softmax",
        optimizer=_adam(1e-2),
    ),
    ModelSpec(
        name="gan_saturating",
        factory=networks.GAN,
        batch=lambda n, seed: gan_batch(n, seed),
        loss_fn=_bce,
        loss_name="bce",
        task="GAN whose generator minimises log(1 - D(G(z))): its gradient vanishes",
        optimizer=_gan_optimizer,
        demo_steps=60,
        step=gan_step(saturating=True),
        problem="vanishing_gradient",
        fixed_by="gan",
        fix="the non-saturating generator loss -log D(G(z))",
    ),
)


def builtin_specs() -> dict[str, ModelSpec]:
    """The reference models and faulty twins that ship with gradscope (BERT when
    ``transformers`` is installed)."""
    return {spec.name: spec for spec in (*SPECS, *_optional_specs())}


def _optional_specs() -> list[ModelSpec]:
    """BERT built from a config (never downloaded), when ``transformers`` is installed."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return []

    def bert() -> nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=4,
        )
        return BertForSequenceClassification(config)

    def logits_ce(output: Any, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(getattr(output, "logits", output), target)

    return [
        ModelSpec(
            name="bert",
            factory=bert,
            batch=lambda n, seed: token_batch(n, seed),
            loss_fn=logits_ce,
            loss_name="cross_entropy",
            task="text classification: a 2-layer BERT built from a BertConfig (no download)",
            optimizer=_adam(1e-3),
            batch_size=32,
        )
    ]
