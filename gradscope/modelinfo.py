"""A plain description of the watched model, for plugins that judge and suggest."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.nn.utils import parametrize

from gradscope.optimizer_settings import optimizer_settings
from gradscope.stats import activation_kind

#: Folders that hold installed packages: a class defined under one is a library's.
_INSTALLED = ("site-packages", "dist-packages")

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
RECURRENT_TYPES = (
    torch.nn.RNN,
    torch.nn.LSTM,
    torch.nn.GRU,
    torch.nn.RNNCell,
    torch.nn.GRUCell,
    torch.nn.LSTMCell,
)
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
    """One word for what a module does: weight, recurrent, norm, embedding, activation kinds.

    Layers are recognised by what they hold, not only by their class: any module owning a
    ``weight`` matrix (2-D or more) is a linear map ("weight": Hugging Face's ``Conv1D``,
    custom linears), and any module whose own parameters are all 1-D gains and shifts is
    a normalisation ("norm": RMSNorm, ConvNeXt's LayerNorm, a layer scale).
    """
    if isinstance(module, torch.nn.RNN):
        return "vanilla_rnn"
    if isinstance(module, RECURRENT_TYPES):
        return "gated_rnn"
    if isinstance(module, NORM_TYPES):
        return "norm"
    if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, torch.nn.MultiheadAttention):
        return "attention"
    if isinstance(module, WEIGHT_LAYER_TYPES) or _owns_weight_matrix(module):
        return "weight"
    own = [p for _, p in own_parameters(module) if not _uninitialized(p)]
    if own and all(p.dim() <= 1 for p in own):
        return "norm"
    kind = activation_kind(module)
    if kind != "plain":
        return kind
    return "other"


def _owns_weight_matrix(module: torch.nn.Module) -> bool:
    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is None and parametrize.is_parametrized(module, "weight"):
        return any(p.dim() >= 2 for _, p in own_parameters(module))
    return weight is not None and not _uninitialized(weight) and weight.dim() >= 2


def own_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """A module's own parameters: its direct ones and, for a parametrized module
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``, ...), the ones
    its parametrizations store one level down (``parametrizations.weight.original0``):
    they are the module's weight."""
    own = list(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += [
            (f"parametrizations.{n}", p) for n, p in module.parametrizations.named_parameters()
        ]
    return own


def parametrization_parts(model: torch.nn.Module) -> set[int]:
    """ids of the modules that hold parametrized modules' parametrizations: parts of
    their module, not layers of their own."""
    inside: set[int] = set()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            inside.update(id(m) for m in module.parametrizations.modules())
    return inside


def _uninitialized(p: torch.Tensor) -> bool:
    return isinstance(p, torch.nn.parameter.UninitializedParameter)


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
    #: Layer name -> the part of the model it belongs to, when the model is trained in
    #: parts (several optimizer parameter groups or optimizers, or ``watch(parts=...)``).
    parts: dict[str, str] = field(default_factory=dict)
    #: The optimizer's class and param-group hyper-parameters, parameters named
    #: (:func:`gradscope.optimizer_settings.optimizer_settings`): trial() replays them.
    optimizer_settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (saved with a report so that it can be judged again)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        layers = []
        for layer in fields.pop("layers", []):
            layer = dict(layer)
            shape = layer.get("output_shape")
            layer["output_shape"] = tuple(shape) if shape is not None else None
            layers.append(LayerInfo(**layer))
        return cls(layers=layers, **fields)

    def layer(self, name: str | None) -> LayerInfo | None:
        """The layer called ``name``, or None."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def roles(self) -> set[str]:
        """The distinct roles of the model's layers."""
        return {layer.role for layer in self.layers}

    def hidden_roles(self) -> set[str]:
        """The roles of the layers up to the last weight layer in forward order: an
        output activation after it (a sigmoid for BCE, a tanh image) is left out, and so
        are channel gates' (:meth:`gate_layers`: a squeeze-excitation sigmoid is a gate
        between 0 and 1, not a hidden activation a ReLU could replace)."""
        weights = [
            k
            for k, layer in enumerate(self.layers)
            if layer.role in ("weight", "vanilla_rnn", "gated_rnn")
        ]
        if not weights:
            return self.roles()
        gates = self.gate_layers()
        return {layer.role for layer in self.layers[: weights[-1] + 1] if layer.name not in gates}

    def gate_layers(self) -> set[str]:
        """Layers that compute a channel gate (the squeeze-excitation blocks of
        MobileNetV3, EfficientNet, RegNet): from a pooling layer that keeps one value per
        channel (an image-like output of spatial size 1) through the layers after it, all
        of spatial size 1, to the sigmoid that makes the gate, with more of the network
        after it.  Their gradient is small by design (it reaches a whole channel through one
        multiplier), and their sigmoid must stay one."""
        gates: set[str] = set()
        for k, layer in enumerate(self.layers):
            if layer.role != "other" or layer.params or not _one_per_channel(layer):
                continue
            for j in range(k + 1, len(self.layers) - 1):
                if not _one_per_channel(self.layers[j]):
                    break
                if self.layers[j].role == "sigmoid":
                    gates.update(gate.name for gate in self.layers[k : j + 1])
                    break
        return gates

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


def _one_per_channel(layer: LayerInfo) -> bool:
    """Whether a layer's output is (batch, channels, 1, 1) (or 1, 1, 1): one value per
    channel of an image-like tensor."""
    shape = layer.output_shape
    return shape is not None and len(shape) in (4, 5) and max(shape[2:]) == 1


def hooked_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules gradscope measures: leaves, and containers that own parameters directly."""
    chosen = []
    inside = parametrization_parts(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue  # TorchScript refuses forward hooks
        if id(module) in inside:
            continue  # a parametrization (weight_norm's): part of the module it belongs to
        is_leaf = all(id(child) in inside for child in module.children())
        owns_params = bool(own_parameters(module))
        if is_leaf or owns_params:
            chosen.append((name or type(module).__name__, module))
    return chosen


def part_map(
    model: torch.nn.Module,
    layers: list[LayerInfo],
    optimizer: torch.optim.Optimizer | None,
    parts: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Layer name -> part name, from the user's ``parts`` (name -> module or module names)
    or from the optimizer's parameter groups when there are several.

    A group's part is named after the module that holds all of its parameters (the
    deepest common prefix of their names, e.g. ``generator``), or ``group N``.
    """
    owner_of = {p: layer.name for layer in layers for p in layer.params}
    if parts:
        by_module = {id(m): n for n, m in model.named_modules()}
        named: dict[str, str] = {}
        for part, members in parts.items():
            members = members if isinstance(members, (list, tuple)) else [members]
            for member in members:
                prefix = member if isinstance(member, str) else by_module.get(id(member), "")
                for layer in layers:
                    if layer.name == prefix or layer.name.startswith(prefix + "."):
                        named[layer.name] = part
        return named
    if optimizer is None or len(optimizer.param_groups) < 2:
        return {}
    names = {id(p): n for n, p in model.named_parameters()}
    mapped: dict[str, str] = {}
    for k, group in enumerate(optimizer.param_groups):
        params = [names[id(p)] for p in group["params"] if id(p) in names]
        if not params:
            continue
        prefix = _common_prefix([n.rsplit(".", 1)[0] if "." in n else "" for n in params])
        part = prefix or f"group {k}"
        for param in params:
            if param in owner_of:
                mapped[owner_of[param]] = part
    return mapped if len(set(mapped.values())) > 1 else {}


def _common_prefix(module_names: list[str]) -> str:
    split = [n.split(".") if n else [] for n in module_names]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def describe(
    model: torch.nn.Module,
    modules: list[tuple[str, torch.nn.Module]],
    order: list[int],
    optimizer: torch.optim.Optimizer | None,
    has_scaler: bool,
    name: str | None = None,
    shapes: list[tuple[int, ...] | None] | None = None,
    parts: dict[str, Any] | None = None,
) -> ModelInfo:
    """Build a :class:`ModelInfo` with layers in ``order`` (indices into ``modules``)."""
    layers = []
    for j in order:
        mod_name, module = modules[j]
        prefix = "" if mod_name == type(model).__name__ and module is model else mod_name + "."
        own = own_parameters(module)
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
        param_shapes={
            n: list(p.shape)
            for n, p in model.named_parameters()
            if not isinstance(p, torch.nn.parameter.UninitializedParameter)  # lazy, not yet run
        },
        parts=part_map(model, layers, optimizer, parts),
        optimizer_settings=optimizer_settings(optimizer, model),
    )


def library_defined(module: torch.nn.Module) -> bool:
    """Whether the module's class comes from an installed package other than torch (a
    Hugging Face model's own layer), not from torch or the user's code: a parameter such
    a class reads only with an optional input is the library's design, not a bug."""
    name = type(module).__module__ or ""
    if name.split(".")[0] in ("torch", "__main__", "builtins"):
        return False
    source = getattr(sys.modules.get(name), "__file__", None) or ""
    return any(folder in source.replace("\\", "/").split("/") for folder in _INSTALLED)
