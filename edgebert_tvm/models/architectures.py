"""What differs between BERT and ALBERT encoders, behind one small interface.

The EdgeBERT model runs HuggingFace's own modules (embeddings, linear layers, layer norms, pooler)
but owns the encoder layer's forward, so that it can apply attention spans and expose every layer
boundary. An `Architecture` tells it where those modules live in a backbone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from ..errors import EdgeBertError


@dataclasses.dataclass(frozen=True)
class LayerParts:
    """The modules of one encoder layer, named by their role."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    activation: Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to reach the parts of one HuggingFace backbone family."""

    model_type: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    distinct_layers: Callable[[PreTrainedModel], list[nn.Module]]
    num_distinct_layers: Callable[[PretrainedConfig], int]
    layer_parts: Callable[[nn.Module, PretrainedConfig], LayerParts]
    embed: Callable[[PreTrainedModel, torch.Tensor, torch.Tensor], torch.Tensor]
    pool: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]
    check_config: Callable[[PretrainedConfig], None] = lambda config: None

    def layer_group(self, config: PretrainedConfig, layer: int) -> int:
        """Index of the distinct layer that runs as encoder layer `layer` (0-based)."""
        groups = self.num_distinct_layers(config)
        return int(layer / (config.num_hidden_layers / groups))


def _bert_parts(layer: nn.Module, config: PretrainedConfig) -> LayerParts:
    return LayerParts(
        query=layer.attention.self.query,
        key=layer.attention.self.key,
        value=layer.attention.self.value,
        attn_out=layer.attention.output.dense,
        attn_norm=layer.attention.output.LayerNorm,
        ffn_in=layer.intermediate.dense,
        ffn_out=layer.output.dense,
        ffn_norm=layer.output.LayerNorm,
        activation=ACT2FN[config.hidden_act],
    )


def _albert_parts(layer: nn.Module, config: PretrainedConfig) -> LayerParts:
    return LayerParts(
        query=layer.attention.query,
        key=layer.attention.key,
        value=layer.attention.value,
        attn_out=layer.attention.dense,
        attn_norm=layer.attention.LayerNorm,
        ffn_in=layer.ffn,
        ffn_out=layer.ffn_output,
        ffn_norm=layer.full_layer_layer_norm,
        activation=ACT2FN[config.hidden_act],
    )


def _albert_embed(backbone: PreTrainedModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    hidden = backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    return backbone.encoder.embedding_hidden_mapping_in(hidden)


def _albert_check(config: PretrainedConfig) -> None:
    if config.inner_group_num != 1:
        raise EdgeBertError(f"ALBERT with inner_group_num={config.inner_group_num} is not supported (only 1)")


def _check_position_embedding(config: PretrainedConfig) -> None:
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise EdgeBertError(f"BERT position_embedding_type {kind!r} is not supported (only 'absolute')")


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        model_type="bert",
        config_class=BertConfig,
        model_class=BertModel,
        distinct_layers=lambda backbone: list(backbone.encoder.layer),
        num_distinct_layers=lambda config: config.num_hidden_layers,
        layer_parts=_bert_parts,
        embed=lambda backbone, ids, types: backbone.embeddings(input_ids=ids, token_type_ids=types),
        pool=lambda backbone, hidden: backbone.pooler(hidden),
        check_config=_check_position_embedding,
    ),
    "albert": Architecture(
        model_type="albert",
        config_class=AlbertConfig,
        model_class=AlbertModel,
        distinct_layers=lambda backbone: [group.albert_layers[0] for group in backbone.encoder.albert_layer_groups],
        num_distinct_layers=lambda config: config.num_hidden_groups,
        layer_parts=_albert_parts,
        embed=_albert_embed,
        pool=lambda backbone, hidden: backbone.pooler_activation(backbone.pooler(hidden[:, 0])),
        check_config=_albert_check,
    ),
}


def architecture_for(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise EdgeBertError(f"unknown model_type {model_type!r} (supported: {known})") from None
