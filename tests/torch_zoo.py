"""Tiny modules written the way model zoos write dropout (no timm/torchvision needed).

Import only after ``require("torch")``. Each module's docstring says which sites it
has; the tests write the expected sites from those definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the zoo spelling
from torch import nn
from torch.nn.functional import dropout2d as captured_dropout2d  # bound at import time


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> torch.Tensor:
    """timm's ``drop_path``: one decision per sample, the mask divided before the multiply."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm's ``DropPath`` module."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's ``stochastic_depth``: "row" (one decision per sample) or "batch" (one)."""
    if not training or p == 0.0:
        return x
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` module."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.mode, self.training)


def legacy_drop_path_class() -> type[nn.Module]:
    """A ``DropPath`` as timm writes it with ``scale_by_keep=False``: ``x * bernoulli(keep)``.

    The kept values are not scaled by 1/keep, so it is not inverted dropout and no
    rewrite rule may take it for SpatialDropout: the export must fall back to eval form.
    (The older ``x / keep * floor(keep + u)`` form converts: rules.floor_mask.)
    """

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            return x * x.new_empty(shape).bernoulli_(keep)

    return DropPath


class Block(nn.Module):
    """Conv + BN; ``F.dropout2d`` bound at import time (p) and ``torch.feature_dropout`` (0.1),
    both gated on the block's flag; the branch goes through ``drop_path`` (a module)."""

    def __init__(self, channels: int, p: float, drop_path_module: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.p = p
        self.drop_path = drop_path_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = captured_dropout2d(y, self.p, self.training)
        y = torch.feature_dropout(y, 0.1, self.training)
        return x + self.drop_path(y)


class ZooNet(nn.Module):
    """A timm-style classifier with every way zoos write dropout.

    Sites, for (N, 3, H, W) input (C = 4 channels):
    - ``blocks.0``: ``F.dropout2d`` 0.2 and ``torch.feature_dropout`` 0.1 (axes 2, 3), timm
      ``DropPath`` 0.2 (axes 1, 2, 3);
    - ``blocks.1``: the same two calls, and a legacy ``DropPath`` 0.25 (left out);
    - ``drop2d``: ``nn.Dropout2d`` 0.15 (axes 2, 3);
    - root: in-place ``F.dropout2d`` 0.05 (axes 2, 3), ``F.dropout1d`` 0.3 on (N, C, L)
      (axis 2), ``torch.dropout`` 0.25, head ``F.dropout(p=self.drop_rate)`` 0.35
      (element-wise), ``F.alpha_dropout`` 0.125 (left out), ``F.dropout`` 0.5 under
      ``if self.training:`` (the root is exported with its own flag on);
    - ``alpha``: ``nn.AlphaDropout`` 0.1 (left out).
    """

    def __init__(self, channels: int = 4, classes: int = 5, drop_rate: float = 0.35) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.blocks = nn.ModuleList([
            Block(channels, 0.2, DropPath(0.2)),
            Block(channels, 0.2, legacy_drop_path_class()(0.25)),
        ])
        self.drop2d = nn.Dropout2d(0.15)
        self.alpha = nn.AlphaDropout(0.1)
        self.fc = nn.Linear(channels, classes)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.drop2d(x)
        x = F.dropout2d(x, 0.05, self.training, inplace=True)
        if self.training:
            x = F.dropout(x, 0.5)
        x = F.dropout1d(x.flatten(2), 0.3, training=self.training).mean(-1)
        x = torch.dropout(x, 0.25, self.training)
        x = F.alpha_dropout(x, 0.125, training=self.training)
        x = self.alpha(x)
        return self.fc(F.dropout(x, p=self.drop_rate, training=self.training))


class Heads(nn.Module):
    """One dropout per output, applied straight to an input, so each mask is visible.

    Inputs: ``x3`` (N, C, L), ``x4`` (N, C, H, W), ``x5`` (N, C, D, H, W), ``cl`` (C, L)
    and ``cdhw`` (C, D, H, W) unbatched, ``tokens`` (N, L, C). The last two outputs
    repeat two earlier calls exactly: each must keep a mask of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.d1 = nn.Dropout1d(0.3)
        self.d1_unbatched = nn.Dropout1d(0.35)
        self.d2 = nn.Dropout2d(0.4)
        self.d3 = nn.Dropout3d(0.25)
        self.d3_unbatched = nn.Dropout3d(0.3)
        self.drop_path = DropPath(0.3)
        self.row = StochasticDepth(0.3, "row")
        self.batch = StochasticDepth(0.4, "batch")

    def forward(self, x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor, cl: torch.Tensor,
                cdhw: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            self.d1(x3),
            self.d1_unbatched(cl),
            self.d2(x4),
            self.d3(x5),
            self.d3_unbatched(cdhw),
            F.dropout1d(cl, 0.2, self.training),
            F.dropout2d(x4, 0.5, self.training),
            F.dropout3d(x5, 0.4, self.training),
            torch.feature_dropout(x3, 0.2, self.training),
            self.drop_path(tokens),
            self.row(x4),
            self.batch(x4),
            F.dropout(x3, 0.3, self.training),
            F.dropout2d(x4, 0.5, self.training),
            F.dropout(x3, 0.3, self.training),
        )


# --- Found by behaviour: drop path of any class name, drop-connect, attention dropout ---


def hf_drop_path(input: torch.Tensor, drop_prob: float = 0.0,  # noqa: A002 - HF's name
                 training: bool = False) -> torch.Tensor:
    """Hugging Face's ``drop_path`` (ConvNeXt, DINOv2, Swin, BEiT): ``floor_(keep + rand)``."""
    if drop_prob == 0.0 or not training:
        return input
    keep_prob = 1 - drop_prob
    shape = (input.shape[0],) + (1,) * (input.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=input.dtype, device=input.device)
    random_tensor.floor_()  # binarize
    return input.div(keep_prob) * random_tensor


class ConvNextDropPath(nn.Module):
    """Hugging Face's ``ConvNextDropPath`` (``Dinov2DropPath``, ``SwinDropPath`` are the same)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hf_drop_path(hidden_states, self.drop_prob, self.training)


def drop_connect(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """EfficientNet-PyTorch's ``drop_connect``: ``floor(keep + rand)``, then ``x / keep * mask``."""
    if not training:
        return inputs
    batch_size = inputs.shape[0]
    keep_prob = 1 - p
    random_tensor = keep_prob
    random_tensor += torch.rand([batch_size, 1, 1, 1], dtype=inputs.dtype, device=inputs.device)
    binary_tensor = torch.floor(random_tensor)
    return inputs / keep_prob * binary_tensor


class MBConvBlock(nn.Module):
    """EfficientNet's block: BN inside, drop-connect written inline in ``forward``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self._depthwise_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self._bn1 = nn.BatchNorm2d(channels)
        self._project_conv = nn.Conv2d(channels, channels, 1)
        self._bn2 = nn.BatchNorm2d(channels)

    def forward(self, inputs: torch.Tensor, drop_connect_rate: float | None = None
                ) -> torch.Tensor:
        x = torch.relu(self._bn1(self._depthwise_conv(inputs)))
        x = self._bn2(self._project_conv(x))
        if drop_connect_rate:
            x = drop_connect(x, p=drop_connect_rate, training=self.training)
        return x + inputs


class ConvNextLayer(nn.Module):
    """ConvNeXt's layer: depthwise conv, LayerNorm, MLP, a named drop path on the branch."""

    def __init__(self, dim: int, drop_path: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.layernorm = nn.LayerNorm(dim)
        self.pwconv = nn.Linear(dim, dim)
        self.drop_path = ConvNextDropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(hidden_states).permute(0, 2, 3, 1)
        x = self.pwconv(self.layernorm(x)).permute(0, 3, 1, 2)
        return hidden_states + self.drop_path(x)


class DropPathNet(nn.Module):
    """Drop path under other names, with BatchNorm whose eval form must be kept.

    Sites, for (N, C, H, W) input: ``stages.0`` ConvNeXt layer's ``ConvNextDropPath`` 0.3 and
    ``blocks.{0,1}`` EfficientNet drop-connect at rates 0.2·0/2 (none) and 0.2·1/2 = 0.1 —
    written as lukemelas' EfficientNet does (``rate * idx / len(blocks)``) — all sharing every
    axis but the batch.
    """

    def __init__(self, channels: int = 4, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.stages = nn.ModuleList([ConvNextLayer(channels, 0.3)])
        self.blocks = nn.ModuleList([MBConvBlock(channels), MBConvBlock(channels)])
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        for idx, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * float(idx) / len(self.blocks)
            x = block(x, drop_connect_rate=rate)
        return x


class DropPathProbes(nn.Module):
    """Each drop path straight on an input, so each mask is visible (one output each).

    Outputs: ``ConvNextDropPath`` 0.3 on (N, L, C) tokens (axes 1, 2 shared); the
    drop-connect of an ``MBConvBlock``-like module 0.25 on (N, C, H, W) (axes 1, 2, 3).
    """

    def __init__(self) -> None:
        super().__init__()
        self.drop_path = ConvNextDropPath(0.3)
        self.drop_connect_rate = 0.25

    def forward(self, tokens: torch.Tensor, maps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.drop_path(tokens),
                drop_connect(maps, p=self.drop_connect_rate, training=self.training))


class BertSelfAttention(nn.Module):
    """Hugging Face's SDPA self-attention (BERT; ViT, DINOv2, Wav2Vec2 write the same call)."""

    def __init__(self, hidden_size: int = 8, num_attention_heads: int = 2,
                 attention_probs_dropout_prob: float = 0.25) -> None:
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.all_head_size = hidden_size
        self.query = nn.Linear(hidden_size, self.all_head_size)
        self.key = nn.Linear(hidden_size, self.all_head_size)
        self.value = nn.Linear(hidden_size, self.all_head_size)
        self.dropout_prob = attention_probs_dropout_prob

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_x_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attn_output = torch.nn.functional.scaled_dot_product_attention(
            query_layer, key_layer, value_layer, attn_mask=attention_mask,
            dropout_p=self.dropout_prob if self.training else 0.0, is_causal=False)
        attn_output = attn_output.transpose(1, 2)
        return attn_output.reshape(attn_output.size()[:-2] + (self.all_head_size,))


class AttentionNet(nn.Module):
    """A tiny encoder: HF-style SDPA attention (with an additive mask), then a
    ``nn.TransformerEncoderLayer`` (``nn.MultiheadAttention`` 0.2 with
    ``need_weights=False``, its own ``nn.Dropout`` 0.1 ×3), LayerNorm, a two-layer
    ``nn.LSTM`` with dropout 0.15 between its layers.

    Sites: ``attention`` 0.25 and ``encoder.self_attn`` 0.2 on the attention
    probabilities; ``encoder.dropout``, ``.dropout1``, ``.dropout2`` 0.1 (forced);
    ``rnn`` 0.15 (dynamo; TorchScript refuses LSTM dropout in training, so it is
    left out there); all element-wise.
    """

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, 2, 0.25)
        self.encoder = nn.TransformerEncoderLayer(hidden, 2, dim_feedforward=16, dropout=0.1,
                                                  batch_first=True)
        self.encoder.self_attn.dropout = 0.2
        self.norm = nn.LayerNorm(hidden)
        self.rnn = nn.LSTM(hidden, hidden, num_layers=2, dropout=0.15, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.norm(self.encoder(x + self.attention(x, mask))))[0]


class AttentionProbes(nn.Module):
    """``F.scaled_dot_product_attention`` as HF writes it, once per way SDPA is called.

    With ``value`` the identity (one value per key) each output is the attention
    probabilities themselves, so each dropout mask is visible. Outputs: plain
    (p 0.3), ``is_causal`` (0.2), boolean mask (0.25), float mask (0.35),
    ``scale=0.5`` (0.3), ``enable_gqa`` with 1 key/value head for 2 query heads (0.4).
    """

    RATES = (0.3, 0.2, 0.25, 0.35, 0.3, 0.4)

    def __init__(self) -> None:
        super().__init__()
        self.rates = self.RATES

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bool_mask: torch.Tensor,
                float_mask: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        sdpa = F.scaled_dot_product_attention
        p = [rate if self.training else 0.0 for rate in self.rates]
        return (sdpa(q, k, v, dropout_p=p[0]),
                sdpa(q, k, v, dropout_p=p[1], is_causal=True),
                sdpa(q, k, v, attn_mask=bool_mask, dropout_p=p[2]),
                sdpa(q, k, v, attn_mask=float_mask, dropout_p=p[3]),
                sdpa(q, k, v, dropout_p=p[4], scale=0.5),
                sdpa(q, k1, v1, dropout_p=p[5], enable_gqa=True))


class MultiheadProbes(nn.Module):
    """Two ``nn.MultiheadAttention`` (one head, value and output projections the identity),
    called as ``nn.Transformer*`` calls it (``need_weights=False``: p 0.3) and by default
    (``need_weights=True``: p 0.2). With ``value`` the identity each output is the
    attention probabilities."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.fused = nn.MultiheadAttention(dim, 1, dropout=0.3, bias=False, batch_first=True)
        self.weights = nn.MultiheadAttention(dim, 1, dropout=0.2, bias=False, batch_first=True)
        with torch.no_grad():
            for mha in (self.fused, self.weights):
                mha.in_proj_weight[2 * dim:].copy_(torch.eye(dim))
                mha.out_proj.weight.copy_(torch.eye(dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, value: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.fused(x, memory, value, need_weights=False)[0],
                self.weights(x, memory, value)[0])


class Probes(nn.Module):
    """:class:`AttentionProbes`, :class:`MultiheadProbes` and :class:`DropPathProbes` in one
    module (one export per exporter): their outputs in that order."""

    def __init__(self) -> None:
        super().__init__()
        self.sdpa = AttentionProbes()
        self.mha = MultiheadProbes()
        self.paths = DropPathProbes()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bool_mask: torch.Tensor,
                float_mask: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, x: torch.Tensor,
                memory: torch.Tensor, value: torch.Tensor, tokens: torch.Tensor,
                maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*self.sdpa(q, k, v, bool_mask, float_mask, k1, v1),
                *self.mha(x, memory, value), *self.paths(tokens, maps))


class LayerDrop(nn.Module):
    """fairseq-style LayerDrop: each layer skipped with probability 0.3 by a Python branch on
    ``torch.rand(1)`` in training. No dropout op can express it: it must be left out."""

    def __init__(self, width: int = 4, layerdrop: float = 0.3) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.layerdrop = layerdrop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.training and torch.rand(1) < self.layerdrop:
                continue
            x = layer(x)
        return x
