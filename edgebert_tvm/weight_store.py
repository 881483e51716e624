"""Weights kept out of the library: stored compressed in the artifact, decoded into TVM's tensor cache at load.

A pass that wants a constant stored this way (ApproximateRedundantData with `at_load`) replaces it
by `lookup(key)`, a call of the runtime's `vm.builtin.tensor_cache.get`. The artifact writes the
compressed tensors to `weights.rda.safetensors` (each `rda.Encoded.to_bytes` as a uint8 tensor, its
shape, dtype and grouping in the file's metadata); `load` decodes them and puts them in the cache
before the model's first call. Keys are content hashes, so artifacts loaded side by side in one
process never see each other's weights under the same key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from . import rda
from .errors import EdgeBertError

FILE_NAME = "weights.rda.safetensors"
_CACHE_GET = "vm.builtin.tensor_cache.get"


def cache_key(encoded: rda.Encoded) -> str:
    header = json.dumps([list(encoded.shape), encoded.dtype.str, encoded.granularity]).encode()
    return "edgebert.rda/" + hashlib.sha256(header + encoded.to_bytes()).hexdigest()[:24]


def lookup(key: str, shape: tuple[int, ...], dtype: str) -> relax.Expr:
    """The tensor stored under `key`, read from the runtime's tensor cache when the function runs."""
    return relax.op.call_pure_packed(_CACHE_GET, tvm.ir.StringImm(key), ty_args=relax.TensorType(shape, dtype))


def fill_cache(stored: dict[str, rda.Encoded], device: tvm.runtime.Device) -> None:
    """Decode every stored tensor onto `device` under its key."""
    update = tvm.get_global_func("vm.builtin.tensor_cache.update")
    for key, encoded in stored.items():
        update(key, tvm.runtime.tensor(np.ascontiguousarray(rda.decode(encoded)), device), True)


def write(stored: dict[str, rda.Encoded], path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {key: np.frombuffer(encoded.to_bytes(), np.uint8) for key, encoded in stored.items()}
    layout = {key: {"shape": list(e.shape), "dtype": e.dtype.str, "granularity": e.granularity}
              for key, e in stored.items()}
    save_file(tensors, str(path), metadata={"edgebert.rda": json.dumps(layout)})


def read(path: Path) -> dict[str, rda.Encoded]:
    """The compressed tensors of `path`; anything unreadable or inconsistent is a one-line error."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            layout = json.loads((f.metadata() or {})["edgebert.rda"])
            stored = {}
            for key, entry in layout.items():
                encoded = rda.Encoded.from_bytes(f.get_tensor(key).tobytes(), tuple(entry["shape"]),
                                                 np.dtype(entry["dtype"]), entry["granularity"])
                if cache_key(encoded) != key:
                    raise ValueError(f"tensor {key} does not match its content hash")
                stored[key] = encoded
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise EdgeBertError(f"{path}: corrupt compressed weight store ({err})") from None
    return stored
