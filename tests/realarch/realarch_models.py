"""Real architectures from tiny configs (random init, nothing downloaded) and synthetic data.

Every builder seeds torch itself, so a model is the same whichever test builds it first.
Hugging Face models come from their config classes, never ``from_pretrained``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Classes of the synthetic image task; images are a class template plus noise.
IMAGE_CLASSES = 10
IMAGE_SIZE = 32
#: Vocabulary and length of the synthetic token tasks.
VOCAB = 256
SEQ_LEN = 32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- data ----------------------------------------------------------------------------------


def image_batch(step: int, n: int = 16) -> dict[str, torch.Tensor]:
    """``pixel_values`` (n, 3, 32, 32) and ``labels``: a fixed template per class plus noise."""
    templates = torch.randn(IMAGE_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=_gen(1234))
    g = _gen(step)
    labels = torch.randint(0, IMAGE_CLASSES, (n,), generator=g)
    noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return {"pixel_values": templates[labels] + 0.5 * noise, "labels": labels}


def token_batch(step: int, n: int = 8) -> dict[str, torch.Tensor]:
    """``input_ids`` following a fixed random successor table 90% of the time (an LM task)."""
    successor = torch.randperm(VOCAB, generator=_gen(4321))
    g = _gen(step)
    ids = torch.empty(n, SEQ_LEN, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    jump = torch.rand(n, SEQ_LEN, generator=g) < 0.1
    rand = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    for t in range(1, SEQ_LEN):
        ids[:, t] = torch.where(jump[:, t], rand[:, t], successor[ids[:, t - 1]])
    return {"input_ids": ids}


def lm_batch(step: int) -> dict[str, torch.Tensor]:
    """A causal LM batch: the model shifts ``labels`` itself."""
    ids = token_batch(step)["input_ids"]
    return {"input_ids": ids, "labels": ids}


def classify_tokens_batch(step: int) -> dict[str, torch.Tensor]:
    """Sequence classification: the label is whether the first token (the one BERT's pooler
    reads) is in the lower half of the vocabulary."""
    ids = token_batch(step)["input_ids"]
    return {"input_ids": ids, "labels": (ids[:, 0] < VOCAB // 2).long()}


def seq2seq_batch(step: int) -> dict[str, torch.Tensor]:
    """Copy task for an encoder-decoder: the target is the first 16 input tokens."""
    ids = token_batch(step)["input_ids"]
    return {"input_ids": ids, "labels": ids[:, :16].clone()}


def signal_batch(step: int, n: int = 32, steps: int = 20, size: int = 8) -> tuple:
    """(x (n, steps, size), y): y is the sign of the first feature summed over the last
    three steps (two classes; short memory, so a healthy GRU/LSTM learns it quickly)."""
    g = _gen(step)
    x = torch.randn(n, steps, size, generator=g)
    return x, (x[:, -3:, 0].sum(dim=1) > 0).long()


def audio_batch(step: int, n: int = 8, samples: int = 1600) -> dict[str, torch.Tensor]:
    """Raw audio for a speech encoder: a noisy sine at 300 Hz (class 0) or 2 kHz (class 1),
    0.1 s at 16 kHz."""
    g = _gen(step)
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.arange(samples) / 16000.0
    freq = torch.where(y == 1, 2000.0, 300.0)[:, None]
    phase = torch.rand(n, 1, generator=g) * 6.28
    x = torch.sin(2 * math.pi * freq * t + phase) + 0.3 * torch.randn(n, samples, generator=g)
    return {"input_values": x, "labels": y}


def first_input_batch(step: int, n: int = 32, steps: int = 100, size: int = 4) -> tuple:
    """(x (n, steps, size), y): y is the sign of the very first input (long-range memory)."""
    g = _gen(step)
    x = torch.randn(n, steps, size, generator=g)
    return x, (x[:, 0, 0] > 0).long()


def vector_batch(step: int, n: int = 64, size: int = 32) -> tuple:
    """(x (n, size), y): ten class templates plus noise."""
    templates = torch.randn(IMAGE_CLASSES, size, generator=_gen(99))
    g = _gen(step)
    y = torch.randint(0, IMAGE_CLASSES, (n,), generator=g)
    return templates[y] + 0.5 * torch.randn(n, size, generator=g), y


def gan_real(step: int, n: int = 64) -> torch.Tensor:
    """Real samples of the GAN: a 2-D Gaussian at (2, 2), spread 0.2."""
    return torch.tensor([2.0, 2.0]) + 0.2 * torch.randn(n, 2, generator=_gen(step))


def gan_noise(step: int, n: int = 64) -> torch.Tensor:
    """The generator's input noise (8 dims)."""
    return torch.randn(n, 8, generator=_gen(10_000 + step))


# -- Hugging Face models -------------------------------------------------------------------


def resnet() -> nn.Module:
    """HF ResNet, two basic stages (16, 32 channels), BatchNorm after every conv."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        num_labels=IMAGE_CLASSES,
    )
    return ResNetForImageClassification(config)


def resnet18() -> nn.Module:
    """HF ResNet with ResNet-18's topology (4 stages of 2 basic blocks), 1/4 of its width."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        num_labels=IMAGE_CLASSES,
    )
    return ResNetForImageClassification(config)


def resnet_without_batchnorm() -> nn.Module:
    """The same ResNet with every BatchNorm2d replaced by Identity."""
    model = resnet()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())
    return model


def mobilenet_v2() -> nn.Module:
    """HF MobileNetV2 at depth multiplier 0.35 (inverted residuals, ReLU6, BatchNorm)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    config = MobileNetV2Config(
        image_size=IMAGE_SIZE,
        depth_multiplier=0.35,
        num_labels=IMAGE_CLASSES,
        classifier_dropout_prob=0.2,  # the config's default is 0.8
    )
    return MobileNetV2ForImageClassification(config)


def mobilenet_v1() -> nn.Module:
    """HF MobileNetV1 at depth multiplier 0.25 (depthwise separable convs, ReLU6, BatchNorm)."""
    from transformers import MobileNetV1Config, MobileNetV1ForImageClassification

    torch.manual_seed(0)
    # The config's default classifier dropout is 0.999 (TensorFlow's keep probability read
    # as a drop probability): training through it is noise, whatever the learning rate.
    config = MobileNetV1Config(
        image_size=IMAGE_SIZE,
        depth_multiplier=0.25,
        num_labels=IMAGE_CLASSES,
        classifier_dropout_prob=0.2,
    )
    return MobileNetV1ForImageClassification(config)


def vit() -> nn.Module:
    """HF ViT: 8x8 patches of 32x32 images, 2 layers of width 64."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=IMAGE_CLASSES,
    )
    return ViTForImageClassification(config)


def convnext() -> nn.Module:
    """HF ConvNeXt: two stages (16, 32 channels), LayerNorm, GELU, layer scale."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    config = ConvNextConfig(
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_stages=2,
        image_size=IMAGE_SIZE,
        num_labels=IMAGE_CLASSES,
    )
    return ConvNextForImageClassification(config)


def gpt2() -> nn.Module:
    """HF GPT-2 (its linear layers are ``transformers.pytorch_utils.Conv1D``), 2 layers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def wav2vec2() -> nn.Module:
    """HF Wav2Vec2 for audio classification, 2 layers of width 64: its positional
    convolution is weight-normalised (``torch.nn.utils.parametrizations.weight_norm``)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        num_labels=2, mask_time_prob=0.0, classifier_proj_size=32,
    )  # fmt: skip
    return Wav2Vec2ForSequenceClassification(config)


def qwen2() -> nn.Module:
    """HF Qwen2 causal LM (grouped-query attention, RMSNorm, SwiGLU), 2 layers of width 64."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


def distilbert() -> nn.Module:
    """HF DistilBERT for sequence classification, 2 layers of width 64."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    return DistilBertForSequenceClassification(config)


def swin() -> nn.Module:
    """HF Swin Transformer: 4x4 patches of 32x32 images, two stages, windows of 4."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(
        image_size=IMAGE_SIZE, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4],
        window_size=4, num_labels=IMAGE_CLASSES,
    )  # fmt: skip
    return SwinForImageClassification(config)


def bert() -> nn.Module:
    """HF BERT for sequence classification, 2 layers of width 64."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def t5() -> nn.Module:
    """HF T5 encoder-decoder, 2+2 layers of width 64 (RMS LayerNorm, relative positions)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def llama() -> nn.Module:
    """HF Llama causal LM, 2 layers of width 64 (RMSNorm, SwiGLU, rotary positions)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


# -- plain torch models --------------------------------------------------------------------


class RecurrentClassifier(nn.Module):
    """A recurrent layer (``rnn``) read at its last step by a linear ``head``."""

    def __init__(self, cell: type[nn.Module], size: int, hidden: int, classes: int = 2):
        super().__init__()
        self.rnn = cell(size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def recurrent(cell: type[nn.Module], size: int = 8, hidden: int = 32, scale: float = 1.0):
    """A GRU/LSTM/RNN classifier; ``scale`` multiplies the recurrent weights after init."""
    torch.manual_seed(0)
    model = RecurrentClassifier(cell, size, hidden)
    with torch.no_grad():
        for name, param in model.rnn.named_parameters():
            if name.startswith("weight_hh"):
                param.mul_(scale)
    return model


def tanh_mlp(
    depth: int = 20, width: int = 32, std: float | None = None, xavier: bool = False
) -> nn.Sequential:
    """``depth`` Linear+Tanh layers and a linear head.

    ``std`` replaces the default init by N(0, std^2); ``xavier`` by Xavier with the tanh gain.
    """
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, IMAGE_CLASSES))
    model = nn.Sequential(*layers)
    if std is not None:
        for module in model:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
    if xavier:
        for module in model:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("tanh"))
                nn.init.zeros_(module.bias)
    return model


def generator() -> nn.Sequential:
    """The GAN's generator: noise (8) -> 2-D sample."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)
    )


def discriminator() -> nn.Sequential:
    """The GAN's discriminator: 2-D sample -> probability of being real."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1), nn.Sigmoid())
