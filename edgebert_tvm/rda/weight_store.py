"""Weights kept out of the library: stored compressed in the artifact, decoded into TVM's tensor cache at load.

A pass that wants a constant stored this way (ApproximateRedundantData with `at_load`) replaces it
by `lookup(key)`, a call of the runtime's `vm.builtin.tensor_cache.get`, or by a lookup of a
transpose of it (`view_key`). The artifact writes the compressed tensors to
`weights.rda.safetensors` (each `rda.Encoded.to_bytes` as a uint8 tensor; shape, dtype, grouping
and the views the module reads in the file's metadata); loading decodes them and puts every view
in the cache before the model's first call. Keys are content hashes, so artifacts loaded side by side in one
process never see each other's weights under the same key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import tvm
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tvm import relax

from . import codec as rda
from ..errors import EdgeBertError

FILE_NAME = "weights.rda.safetensors"
_CACHE_GET = "vm.builtin.tensor_cache.get"


def cache_key(encoded: rda.Encoded) -> str:
    header = json.dumps([list(encoded.shape), encoded.dtype.str, encoded.granularity]).encode()
    return "edgebert.rda/" + hashlib.sha256(header + encoded.to_bytes()).hexdigest()[:24]


def view_key(key: str, axes: list[int]) -> str:
    """The key of stored tensor `key` transposed by `axes` (made when the store is loaded)."""
    return f"{key}|{','.join(map(str, axes))}"


def lookup(key: str, shape: tuple[int, ...], dtype: str) -> relax.Expr:
    """The tensor stored under `key`, read from the runtime's tensor cache when the function runs."""
    return relax.op.call_pure_packed(_CACHE_GET, tvm.ir.StringImm(key), ty_args=relax.TensorType(shape, dtype))


@dataclasses.dataclass
class Store:
    """Compressed tensors by key, and the views of them a compiled module reads."""

    tensors: dict[str, rda.Encoded]
    views: list[str]


STORE_ATTR = "edgebert.weight_store"  # module attr: the compressed tensors, until the compiler takes them


def attach(mod: tvm.IRModule, store: Store) -> tvm.IRModule:
    """`mod` carrying `store` (each tensor as its bytes, with shape, dtype and grouping) for the compiler."""
    tensors = {key: tvm.runtime.tensor(np.frombuffer(e.to_bytes(), np.uint8)) for key, e in store.tensors.items()}
    layout = {key: [list(e.shape), e.dtype.str, e.granularity] for key, e in store.tensors.items()}
    return mod.with_attr(STORE_ATTR, {"tensors": tensors, "layout": json.dumps(layout), "views": json.dumps(store.views)})


def detach(mod: tvm.IRModule) -> tuple[tvm.IRModule, Store | None]:
    """The store a pass attached to `mod` (None if none), and `mod` without it."""
    if not mod.attrs or STORE_ATTR not in mod.attrs:
        return mod, None
    attached = mod.attrs[STORE_ATTR]
    layout = json.loads(str(attached["layout"]))
    tensors = {key: rda.Encoded.from_bytes(attached["tensors"][key].numpy().tobytes(), tuple(shape), np.dtype(dtype),
                                           granularity) for key, (shape, dtype, granularity) in layout.items()}
    return mod.without_attr(STORE_ATTR), Store(tensors, json.loads(str(attached["views"])))


def merged(stores: list[Store]) -> Store | None:
    """One store of every tensor and view of `stores` (keys are content hashes: equal tensors merge)."""
    if not stores:
        return None
    return Store({key: e for store in stores for key, e in store.tensors.items()},
                 sorted({view for store in stores for view in store.views}))


def fill_cache(store: Store, device: tvm.runtime.Device) -> None:
    """Decode the stored tensors and put every view the module reads (a tensor, or a transpose of
    one: `view_key`) onto `device` under its key."""
    update = tvm.get_global_func("vm.builtin.tensor_cache.update")
    decoded: dict[str, np.ndarray] = {}
    for view in store.views:
        key, _, axes = view.partition("|")  # every view's tensor is in the store (`read` checks files)
        if key not in decoded:
            decoded[key] = rda.decode(store.tensors[key])
        array = decoded[key].transpose([int(a) for a in axes.split(",")]) if axes else decoded[key]
        update(view, tvm.runtime.tensor(np.ascontiguousarray(array), device), True)


def write(store: Store, path: Path) -> None:
    tensors = {key: np.frombuffer(encoded.to_bytes(), np.uint8) for key, encoded in store.tensors.items()}
    layout = {key: {"shape": list(e.shape), "dtype": e.dtype.str, "granularity": e.granularity}
              for key, e in store.tensors.items()}
    save_file(tensors, str(path), metadata={"edgebert.rda": json.dumps(layout),
                                            "edgebert.rda.views": json.dumps(store.views)})


def read(path: Path) -> Store:
    """The compressed tensors of `path`; anything unreadable or inconsistent is a one-line error."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            layout, views = json.loads(metadata["edgebert.rda"]), json.loads(metadata["edgebert.rda.views"])
            stored = {}
            for key, entry in layout.items():
                encoded = rda.Encoded.from_bytes(f.get_tensor(key).tobytes(), tuple(entry["shape"]),
                                                 np.dtype(entry["dtype"]), entry["granularity"])
                if cache_key(encoded) != key:
                    raise ValueError(f"tensor {key} does not match its content hash")
                stored[key] = encoded
        if not isinstance(views, list) or any(view.partition("|")[0] not in stored for view in views):
            raise ValueError("views of tensors it does not hold")
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise EdgeBertError(f"{path}: corrupt compressed weight store ({err})") from None
    return Store(stored, views)
