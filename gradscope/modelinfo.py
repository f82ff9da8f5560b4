"""A plain description of the watched model, for plugins that judge and suggest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gradscope.stats import activation_kind

#: Module types whose weights an init fix applies to.
WEIGHT_LAYER_TYPES = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
    torch.nn.Bilinear,
)
RECURRENT_TYPES = (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU, torch.nn.RNNCell)
NORM_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
)


_SIZE_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "input_size",
    "hidden_size",
    "num_layers",
    "num_features",
    "batch_first",
)


def module_role(module: torch.nn.Module) -> str:
    """One word for what a module does: weight, recurrent, norm, embedding, activation kinds."""
    if isinstance(module, torch.nn.RNN):
        return "vanilla_rnn"
    if isinstance(module, RECURRENT_TYPES):
        return "gated_rnn"
    if isinstance(module, WEIGHT_LAYER_TYPES):
        return "weight"
    if isinstance(module, NORM_TYPES):
        return "norm"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, torch.nn.MultiheadAttention):
        return "attention"
    kind = activation_kind(module)
    if kind != "plain":
        return kind
    return "other"


@dataclass
class LayerInfo:
    """One hooked module: name, type, role and the parameters it owns directly."""

    name: str
    type: str
    role: str
    params: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    nonlinearity: str | None = None
    size: dict[str, int] = field(default_factory=dict)
    output_shape: tuple[int, ...] | None = None


@dataclass
class ModelInfo:
    """The model as plugins see it: layers in forward order, optimizer and scaler facts.

    ``var`` is the name snippets use for the model (``model``), ``optimizer_var`` for
    the optimizer.
    """

    model_name: str
    layers: list[LayerInfo]
    optimizer: str | None = None
    lr: float | None = None
    has_scaler: bool = False
    root_type: str = "Module"
    var: str = "model"
    optimizer_var: str = "optimizer"
    param_shapes: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str | None) -> LayerInfo | None:
        """The layer called ``name``, or None."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def roles(self) -> set[str]:
        """The distinct roles of the model's layers."""
        return {layer.role for layer in self.layers}

    def gan_part(self, name: str | None) -> str | None:
        """ "generator" or "discriminator" for a layer of a GAN (by its top-level module name)."""
        if not name:
            return None
        top = name.split(".")[0].lower()
        tops = {layer.name.split(".")[0].lower() for layer in self.layers}
        is_gan = any(t.startswith("gen") for t in tops) and any(t.startswith("disc") for t in tops)
        if not is_gan:
            return None
        if top.startswith("gen"):
            return "generator"
        if top.startswith("disc"):
            return "discriminator"
        return None

    def is_gan(self) -> bool:
        """Whether the model has top-level generator and discriminator parts."""
        return any(self.gan_part(layer.name) for layer in self.layers)

    def sequence_length(self, name: str) -> int | None:
        """Time steps a recurrent layer ran over (from its first output's shape)."""
        layer = self.layer(name)
        if layer is None or layer.output_shape is None or len(layer.output_shape) != 3:
            return None
        return layer.output_shape[1] if layer.size.get("batch_first") else layer.output_shape[0]

    def activation_after(self, name: str) -> str | None:
        """The activation kind (relu/sigmoid/tanh) that follows layer ``name`` in forward order."""
        names = [layer.name for layer in self.layers]
        if name not in names:
            return None
        for layer in self.layers[names.index(name) + 1 :]:
            if layer.role in ("relu", "sigmoid", "tanh"):
                return layer.role
            if layer.role in ("weight", "vanilla_rnn", "gated_rnn"):
                return None
        return None


def hooked_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules gradscope measures: leaves, and containers that own parameters directly."""
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue  # TorchScript refuses forward hooks

        is_leaf = next(iter(module.children()), None) is None
        owns_params = next(iter(module.parameters(recurse=False)), None) is not None
        if is_leaf or owns_params:
            chosen.append((name or type(module).__name__, module))
    return chosen


def describe(
    model: torch.nn.Module,
    modules: list[tuple[str, torch.nn.Module]],
    order: list[int],
    optimizer: torch.optim.Optimizer | None,
    has_scaler: bool,
    name: str | None = None,
    shapes: list[tuple[int, ...] | None] | None = None,
) -> ModelInfo:
    """Build a :class:`ModelInfo` with layers in ``order`` (indices into ``modules``)."""
    layers = []
    for j in order:
        mod_name, module = modules[j]
        prefix = "" if mod_name == type(model).__name__ and module is model else mod_name + "."
        own = list(module.named_parameters(recurse=False))
        layers.append(
            LayerInfo(
                name=mod_name,
                type=type(module).__name__,
                role=module_role(module),
                params=[prefix + n for n, p in own if p.requires_grad],
                frozen=[prefix + n for n, p in own if not p.requires_grad],
                nonlinearity=getattr(module, "nonlinearity", None),
                size={
                    attr: int(getattr(module, attr))
                    for attr in _SIZE_ATTRS
                    if isinstance(getattr(module, attr, None), (int, bool))
                },
                output_shape=shapes[j] if shapes else None,
            )
        )
    lr = None
    if optimizer is not None and optimizer.param_groups:
        lr_value = optimizer.param_groups[0].get("lr")
        lr = float(lr_value) if lr_value is not None else None
    return ModelInfo(
        model_name=name or type(model).__name__,
        layers=layers,
        optimizer=type(optimizer).__name__ if optimizer is not None else None,
        lr=lr,
        has_scaler=has_scaler,
        root_type=type(model).__name__,
        param_shapes={n: list(p.shape) for n, p in model.named_parameters()},
    )
