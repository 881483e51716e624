"""Resumable training state without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import EdgeBertError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def save_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write model, optimizer and RNG state; the JSON file is renamed last, so it marks a whole save."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = directory / f".{STATE_TENSORS}.tmp"
    save_file(tensors, tmp)
    os.replace(tmp, directory / STATE_TENSORS)
    meta = {"progress": progress, "param_groups": opt["param_groups"]}
    tmp = directory / f".{STATE_JSON}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / STATE_JSON)


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress record of a saved state, without loading it; None if there is none."""
    try:
        return json.loads((directory / STATE_JSON).read_text())["progress"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, OSError) as err:
        raise EdgeBertError(f"{directory}: corrupt training state ({err}); delete it to start over") from None


def load_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore a saved state into `model` and `optimizer`; returns its progress, or None if absent."""
    if not (directory / STATE_JSON).is_file():
        return None
    try:
        meta = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(directory / STATE_TENSORS)
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise EdgeBertError(f"{directory}: corrupt training state ({err}); delete it to start over") from None
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta["progress"]
