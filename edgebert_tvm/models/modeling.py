"""The EdgeBERT model in PyTorch: a HuggingFace encoder with an off-ramp after every layer.

DeeBERT-style early exit (an off-ramp per layer: [CLS] -> Linear -> tanh -> Linear, the last layer
using the backbone's pooler and the final classifier), adaptive attention spans applied to the
softmax output, and weights that may hold pruned zeros. The encoder layer's forward is written out
here (it calls HuggingFace's own modules) so that spans fit in and every layer boundary is a call
that the structured importer can export on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from ..errors import EdgeBertError
from .architectures import Architecture, LayerParts, architecture_for
from .config import EdgeBertConfig
from .span import SPAN_RENORM_EPS
from .span import span_mask as span_formula


def span_mask(span_z: torch.Tensor, seq_len: int, span_max: int, span_ramp: int, padded_len: int | None = None,
              form: str = "key") -> torch.Tensor:
    """Adaptive attention span mask (models/span.py), differentiable in z: (heads, keys) by key index,
    or (heads, queries, keys) by query-key distance.

    The offsets are `span.key_offsets` / `span.distance_offsets` made with torch.arange, so an
    exporter that traces the sequence length (ONNX with dynamic axes) keeps them dynamic."""
    positions = torch.arange(seq_len, device=span_z.device, dtype=span_z.dtype)
    if form == "distance":
        offsets = -(positions[:, None] - positions[None, :]).abs()
    else:
        padded = padded_len if padded_len is not None and padded_len >= seq_len else seq_len
        offsets = positions - (padded - 1)
    return span_formula(span_z, offsets, span_max, span_ramp, form)


def encoder_layer(
    parts: LayerParts,
    hidden: torch.Tensor,
    attn_bias: torch.Tensor,
    num_heads: int,
    span: torch.Tensor | None,
    dropout: float,
) -> torch.Tensor:
    """One post-LayerNorm transformer layer; `span` (heads, keys) or (heads, queries, keys) multiplies
    the softmax output."""
    batch, seq, width = hidden.shape
    head_dim = width // num_heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, seq, num_heads, head_dim).transpose(1, 2)

    q, k, v = heads(parts.query(hidden)), heads(parts.key(hidden)), heads(parts.value(hidden))
    scores = torch.matmul(q, k.transpose(2, 3)) * head_dim**-0.5 + attn_bias
    probs = F.softmax(scores, dim=-1)
    if span is not None:
        probs = probs * (span[None, :, None, :] if span.dim() == 2 else span[None])
        probs = probs / (probs.sum(dim=-1, keepdim=True) + SPAN_RENORM_EPS)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, width)
    attn = F.dropout(parts.attn_out(context), p=dropout, training=dropout > 0)
    attn = parts.attn_norm(hidden + attn)
    ffn = parts.ffn_out(parts.activation(parts.ffn_in(attn)))
    ffn = F.dropout(ffn, p=dropout, training=dropout > 0)
    return parts.ffn_norm(attn + ffn)


class OffRamp(nn.Module):
    """DeeBERT off-ramp: [CLS] -> Linear(H, H) -> tanh -> dropout -> Linear(H, labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.tanh(self.pooler(hidden[:, 0]))))


class EdgeBertForSequenceClassification(nn.Module):
    """A BERT/ALBERT encoder with an exit after every layer; `forward` returns all exits' logits."""

    def __init__(self, config: PretrainedConfig, edgebert: EdgeBertConfig) -> None:
        super().__init__()
        self.arch: Architecture = architecture_for(config.model_type)
        self.arch.check_config(config)
        self.config = config
        self.edgebert = edgebert
        self.backbone = self.arch.model_class(config, add_pooling_layer=True)
        dropout = config.hidden_dropout_prob
        self.offramps = nn.ModuleList(
            OffRamp(config.hidden_size, edgebert.num_labels, dropout) for _ in range(config.num_hidden_layers - 1)
        )
        self.classifier_dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, edgebert.num_labels)
        self.span_z: nn.Parameter | None = None
        if edgebert.attention_spans is not None:
            self.span_z = nn.Parameter(self._span_tensor(edgebert.attention_spans))
        # Every layer's output passes through this no-op module, so a forward hook on it sees (and may
        # replace) each layer output: how the accelerator's activation buffers are modelled (rda/activations.py).
        self.layer_output = nn.Identity()

    def _span_tensor(self, spans: list[list[float]]) -> torch.Tensor:
        expected = (self.arch.num_distinct_layers(self.config), self.config.num_attention_heads)
        z = torch.tensor(spans, dtype=torch.float32)
        if tuple(z.shape) != expected:
            raise EdgeBertError(f"attention_spans must have shape {list(expected)} (layers x heads), got {list(z.shape)}")
        return z

    def enable_spans(self, z: float = 1.0) -> None:
        """Start learning an attention span per head, every one at `z` (1.0: the full span)."""
        rows = self.arch.num_distinct_layers(self.config)
        self.edgebert.attention_spans = [[z] * self.config.num_attention_heads for _ in range(rows)]
        self.span_z = nn.Parameter(self._span_tensor(self.edgebert.attention_spans))

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def layer_parts(self, group: int) -> LayerParts:
        return self.arch.layer_parts(self.arch.distinct_layers(self.backbone)[group], self.config)

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (projected to the hidden size) and the additive attention bias."""
        hidden = self.arch.embed(self.backbone, input_ids, token_type_ids)
        keep = attention_mask[:, None, None, :].to(hidden.dtype)
        return hidden, (1.0 - keep) * torch.finfo(hidden.dtype).min

    def span(self, group: int, seq_len: int) -> torch.Tensor | None:
        return None if self.span_z is None else self.span_of(self.span_z[group], seq_len)

    def span_of(self, span_z: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The span mask of one layer group's spans `span_z` (heads,): (heads, seq_len) by key or
        (heads, seq_len, seq_len) by distance."""
        edgebert = self.edgebert
        return span_mask(span_z, seq_len, edgebert.span_max, edgebert.span_ramp, edgebert.seq_len, edgebert.span_form)

    def layer(self, index: int, hidden: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """Encoder layer `index` (0-based); ALBERT's layers map onto their shared group."""
        group = self.arch.layer_group(self.config, index)
        dropout = self.config.hidden_dropout_prob if self.training else 0.0
        span = self.span(group, hidden.shape[1])
        return self.layer_output(
            encoder_layer(self.layer_parts(group), hidden, attn_bias, self.config.num_attention_heads, span, dropout))

    def exit_logits(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the exit after layer `index`; the last layer uses pooler + final classifier."""
        if index < self.num_layers - 1:
            return self.offramps[index](hidden)
        pooled = self.arch.pool(self.backbone, hidden)
        return self.classifier(self.classifier_dropout(pooled))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every exit, shape (batch, num_layers, num_labels)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden, attn_bias = self.embed(input_ids, token_type_ids, attention_mask)
        exits = []
        for index in range(self.num_layers):
            hidden = self.layer(index, hidden, attn_bias)
            exits.append(self.exit_logits(index, hidden))
        return torch.stack(exits, dim=1)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def early_exit(
    model: EdgeBertForSequenceClassification,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    thresholds: list[float],
) -> tuple[torch.Tensor, int]:
    """EdgeBERT's reference behaviour: run layer by layer, leave at the first exit whose entropy is
    below its threshold (for every row of the batch), else at the last layer. Returns (logits, layer)."""
    with torch.no_grad():
        hidden, bias = model.embed(input_ids, token_type_ids, attention_mask)
        for index in range(model.num_layers):
            hidden = model.layer(index, hidden, bias)
            logits = model.exit_logits(index, hidden)
            if index == model.num_layers - 1 or bool((softmax_entropy(logits) < thresholds[index]).all()):
                return logits, index + 1
    raise AssertionError("unreachable: the last layer always exits")


def init_offramps_from_pooler(model: EdgeBertForSequenceClassification) -> None:
    """DeeBERT initialises every off-ramp's pooler from the backbone's pooler."""
    pooler = model.backbone.pooler
    dense = pooler.dense if hasattr(pooler, "dense") else pooler
    with torch.no_grad():
        for ramp in model.offramps:
            ramp.pooler.weight.copy_(dense.weight)
            ramp.pooler.bias.copy_(dense.bias)
