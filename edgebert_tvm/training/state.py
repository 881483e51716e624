"""Resumable training state without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import EdgeBertError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
SAVE_MARK = "progress"  # the tensors file names the save it belongs to: a kill between the renames is caught


def _mark(progress: dict[str, Any]) -> str:
    return f"stage {progress['stage']} step {progress['step']}"


def save_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write model, optimizer and RNG state; the JSON file is renamed last, so it marks a whole save, and
    the tensors carry the progress they belong to, so a kill between the two renames is caught at load."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = directory / f".{STATE_TENSORS}.tmp"
    save_file(tensors, tmp, metadata={SAVE_MARK: _mark(progress)})
    os.replace(tmp, directory / STATE_TENSORS)
    meta = {"progress": progress, "param_groups": opt["param_groups"]}
    tmp = directory / f".{STATE_JSON}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / STATE_JSON)


def _corrupt(directory: Path, err: Exception) -> EdgeBertError:
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return EdgeBertError(f"{directory}: corrupt training state ({reason}); delete it to start over")


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress record of a saved state, without loading it; None if there is none."""
    try:
        progress = json.loads((directory / STATE_JSON).read_text())["progress"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as err:
        raise _corrupt(directory, err) from None
    if not isinstance(progress, dict):
        raise _corrupt(directory, ValueError("progress is not an object"))
    return progress


def load_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore a saved state into `model` and `optimizer`; returns its progress, or None if absent."""
    if not (directory / STATE_JSON).is_file():
        return None
    try:
        meta = json.loads((directory / STATE_JSON).read_text())
        with safe_open(directory / STATE_TENSORS, "pt") as f:
            mark = (f.metadata() or {}).get(SAVE_MARK)
        if mark != _mark(meta["progress"]):
            raise ValueError(f"its tensors are from {mark or 'another save'}, its progress from "
                             f"{_mark(meta['progress'])}")
        tensors = load_file(directory / STATE_TENSORS)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        return meta["progress"]
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, KeyError, TypeError, ValueError,
            RuntimeError) as err:  # a state from a killed save, another model or another version
        raise _corrupt(directory, err) from None
