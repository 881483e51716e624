"""Checkpoint directories (HuggingFace layout + edgebert.json) and the built-in models.

A checkpoint is `config.json`, `model.safetensors` (or its packed form, models/packed.py), tokenizer
files and an optional `edgebert.json`.
Backbone weights may be stored bare (as HuggingFace's BertModel saves them) or under the
`bert.` / `albert.` prefix (as its *ForSequenceClassification models and this project save them).
Weights are read with safetensors only: pickle checkpoints are refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AlbertConfig, PretrainedConfig

from ..adaptivfloat.fake_quant import QUANTIZED_MODULES
from ..errors import EdgeBertError
from ..fileio import atomic_directory
from . import packed
from .architectures import architecture_for
from .builtins import BUILTIN_DIRS, BUILTIN_NAMES, BUILTIN_SHAPES
from .config import EdgeBertConfig
from .modeling import EdgeBertForSequenceClassification, init_offramps_from_pooler

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
INIT_SEED = 0
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "embedding_size")


@dataclasses.dataclass
class Checkpoint:
    """A loaded model, where it came from, and its tokenizer (None for config-only models)."""

    model: EdgeBertForSequenceClassification
    source: str
    tokenizer_dir: Path | None


def load(name_or_dir: str | Path, edgebert: EdgeBertConfig | None = None) -> Checkpoint:
    """Load a built-in model by name or a checkpoint directory; the model is in eval mode."""
    name = str(name_or_dir)
    if name in BUILTIN_SHAPES:
        with torch.random.fork_rng():
            torch.manual_seed(INIT_SEED)
            model = EdgeBertForSequenceClassification(AlbertConfig(**BUILTIN_SHAPES[name]), edgebert or EdgeBertConfig())
            init_offramps_from_pooler(model)
        return Checkpoint(model.eval(), name, None)
    directory = BUILTIN_DIRS[name]() if name in BUILTIN_DIRS else Path(name_or_dir)
    if not directory.exists() and len(directory.parts) == 1:  # a bare word: most likely a mistyped built-in
        raise EdgeBertError(f"{name}: not a built-in model ({', '.join(BUILTIN_NAMES)}) nor a checkpoint directory")
    checkpoint = load_directory(directory, edgebert)
    if name in BUILTIN_DIRS:
        checkpoint.source = name
    return checkpoint


def _read_backbone_config(directory: Path) -> PretrainedConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise EdgeBertError(f"{directory}: no config.json (not a HuggingFace checkpoint directory)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeBertError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise EdgeBertError(f"{path}: no model_type")
    try:
        arch = architecture_for(data["model_type"])
    except EdgeBertError as err:
        raise EdgeBertError(f"{path}: {err}") from None
    try:
        config = arch.config_class.from_dict(data)
    except (TypeError, ValueError, StrictDataclassError) as err:
        raise EdgeBertError(f"{path}: invalid {arch.model_type} config ({' '.join(str(err).split())})") from None
    for name in SIZE_FIELDS:
        value = getattr(config, name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgeBertError(f"{path}: {name} must be a positive integer, got {value!r}")
    return config


def _check_fits_in_memory(config: PretrainedConfig, edgebert: EdgeBertConfig, path: Path) -> None:
    """Build the model on the meta device (no memory) to count its parameters before allocating them."""
    try:
        with torch.device("meta"):
            shape = EdgeBertForSequenceClassification(config, edgebert)
    except (RuntimeError, ValueError) as err:
        raise EdgeBertError(f"{path}: the config describes no valid model ({' '.join(str(err).split())})") from None
    need = sum(p.numel() * p.element_size() for p in shape.parameters())
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise EdgeBertError(f"{path}: the model needs {need / 2**30:.1f} GiB of weights; this machine has "
                            f"{have / 2**30:.1f} GiB of memory")


def _read_weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the weights file read, its tensors): model.safetensors, else the packed form."""
    path = directory / WEIGHTS_NAME
    if path.is_file():
        try:
            weights = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise EdgeBertError(f"{path}: unreadable safetensors file ({err})") from None
    elif (directory / packed.PACKED_WEIGHTS_NAME).is_file():
        path = directory / packed.PACKED_WEIGHTS_NAME
        weights = packed.read(path)
    else:
        pickled = [name for name in PICKLE_WEIGHTS if (directory / name).exists()]
        if pickled:
            raise EdgeBertError(
                f"{directory / pickled[0]}: pickle checkpoints are refused (they can run code); "
                f"convert it to {WEIGHTS_NAME}"
            )
        raise EdgeBertError(f"{directory}: no {WEIGHTS_NAME}")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise EdgeBertError(f"{path}: weight {name} holds NaN or Inf")
    return path, weights


def _tokenizer_dir(directory: Path) -> Path | None:
    """The directory itself if it holds a tokenizer.json that loads (checked now, not at the first sentence)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception for unreadable files
        raise EdgeBertError(f"{path}: unreadable tokenizer ({' '.join(str(err).split())})") from None
    return directory


def _to_model_keys(weights: dict[str, torch.Tensor], model: EdgeBertForSequenceClassification) -> dict[str, torch.Tensor]:
    """Map checkpoint keys onto the model's: `bert.x` or bare `x` -> `backbone.x`; drop unknown heads."""
    prefix = f"{model.config.model_type}."
    backbone_roots = {name for name, _ in model.backbone.named_children()}
    model_keys = set(model.state_dict())
    mapped = {}
    for key, value in weights.items():
        if key.startswith(prefix):
            key = "backbone." + key[len(prefix):]
        elif key.split(".", 1)[0] in backbone_roots:
            key = "backbone." + key
        if key in model_keys:
            mapped[key] = value
    return mapped


def load_directory(directory: Path, edgebert: EdgeBertConfig | None = None) -> Checkpoint:
    """Load a checkpoint directory; off-ramps and classifier it lacks are initialised with a fixed seed.

    Given `edgebert` (a new task's exits, spans and labels), only the backbone is loaded and the
    exits start fresh, as when fine-tuning a backbone for another task.
    """
    if not directory.is_dir():
        raise EdgeBertError(f"{directory}: no such checkpoint directory")
    config = _read_backbone_config(directory)
    new_heads = edgebert is not None  # the caller asks for its own exits (a new task): fresh heads
    edgebert = edgebert or EdgeBertConfig.load(directory)
    _check_fits_in_memory(config, edgebert, directory / "config.json")
    weights_path, weights = _read_weights(directory)
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        model = EdgeBertForSequenceClassification(config, edgebert)
    state = _to_model_keys(weights, model)
    if new_heads:
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    missing_backbone = [k for k in model.state_dict() if k.startswith("backbone.") and k not in state]
    if missing_backbone:
        raise EdgeBertError(
            f"{weights_path}: {len(missing_backbone)} backbone weights missing "
            f"(first: {missing_backbone[0].removeprefix('backbone.')})"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise EdgeBertError(f"{weights_path}: weights do not fit the config ({first})") from None
    if not any(k.startswith("offramps.") for k in state):
        init_offramps_from_pooler(model)
    return Checkpoint(model.eval(), str(directory), _tokenizer_dir(directory))


def save(checkpoint: Checkpoint, directory: Path, pack: bool = False) -> None:
    """Write a checkpoint directory atomically (HuggingFace layout + edgebert.json); `pack` stores the
    matmul and embedding weights as AdaptivFloat-8 codes plus masks (models/packed.py)."""
    model = checkpoint.model
    prefix = f"{model.config.model_type}."

    def saved_name(key: str) -> str:
        return prefix + key.removeprefix("backbone.") if key.startswith("backbone.") else key

    state = {saved_name(k): v.detach().contiguous() for k, v in model.state_dict().items() if k != "span_z"}
    edgebert = dataclasses.replace(model.edgebert, extra=dict(model.edgebert.extra))
    if model.span_z is not None:
        edgebert.attention_spans = model.span_z.detach().clamp(0, 1).tolist()
    with atomic_directory(directory) as tmp:
        model.config.to_json_file(tmp / "config.json")
        if pack:
            edgebert.extra["packed"] = dict(packed.RECORD)
            quantized = {saved_name(f"{n}.weight") for n, m in model.named_modules() if isinstance(m, QUANTIZED_MODULES)}
            packed.write(state, quantized, tmp / packed.PACKED_WEIGHTS_NAME)
        else:
            save_file(state, tmp / WEIGHTS_NAME)
        edgebert.save(tmp)
        if checkpoint.tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (checkpoint.tokenizer_dir / name).is_file():
                    shutil.copy2(checkpoint.tokenizer_dir / name, tmp / name)
