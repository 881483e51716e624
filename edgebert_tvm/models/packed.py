"""Packed checkpoint weights: AdaptivFloat-8 codes of the nonzero values plus a bit mask, in safetensors.

The form a pruned EdgeBERT checkpoint ships in (docs/ARCHITECTURE.md, "Packed checkpoints"): each
matmul and embedding weight (the ones the compiler and the chip store as AdaptivFloat) becomes
`NAME.af8`, the uint8 codes (sign | 3 exponent | 4 mantissa bits, exponent bias fitted per tensor)
of its nonzero entries in row-major order, and `NAME.mask`, its nonzero pattern packed 8 entries a
byte (absent when nothing is zero). Everything else (biases, LayerNorm) stays float32. Reading
decodes to float32: a packed checkpoint loads as the float model whose weights sit on the AF8 grid,
so `--weights adaptivfloat8` re-encodes them exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..adaptivfloat.fake_quant import quantize_weights_
from ..adaptivfloat.quantizer import decode_with_bias, encode, quantize
from ..errors import EdgeBertError

PACKED_WEIGHTS_NAME = "model.af8.safetensors"
FORMAT = "edgebert-af8/1"
BITS, EXP_BITS = 8, 3
# What a packed checkpoint's edgebert.json records ("packed"), so compile can store its weights in
# the format they already sit on (CompileOptions: weight_format "checkpoint").
RECORD = {"format": FORMAT, "weight_format": f"adaptivfloat{BITS}", "exp_bits": EXP_BITS}


def round_weights_(model: torch.nn.Module) -> None:
    """Round `model`'s packed weights in place to what reading its packed file gives back."""
    quantize_weights_(model, lambda x: quantize(x, BITS, EXP_BITS))


def write(state: dict[str, torch.Tensor], packed: set[str], path: Path) -> None:
    """Write `state` to `path`, the tensors named in `packed` as AF8 codes plus a nonzero mask."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, dict[str, object]] = {}
    for name, tensor in state.items():
        values = tensor.detach().cpu().float().numpy()
        if name not in packed:
            arrays[name] = np.ascontiguousarray(values)
            continue
        flat = values.reshape(-1)
        nonzero = flat != 0
        codes, bias = encode(flat[nonzero], BITS, EXP_BITS)
        arrays[f"{name}.af8"] = codes
        if not nonzero.all():
            arrays[f"{name}.mask"] = np.packbits(nonzero)
        layout[name] = {"shape": list(values.shape), "bias": bias}
    save_file(arrays, str(path), metadata={"format": FORMAT, "packed": json.dumps(layout)})


def _unpack(path: Path, name: str, spec: object, tensors: dict[str, np.ndarray]) -> np.ndarray:
    def corrupt(why: str) -> EdgeBertError:
        return EdgeBertError(f"{path}: corrupt packed weight {name} ({why})")

    if not (isinstance(spec, dict) and isinstance(spec.get("bias"), int) and isinstance(spec.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in spec["shape"])):
        raise corrupt("its layout needs an integer bias and a shape")
    codes = tensors.pop(f"{name}.af8", None)
    if codes is None or codes.dtype != np.uint8 or codes.ndim != 1:
        raise corrupt("no 1-D uint8 codes")
    count = int(np.prod(spec["shape"], dtype=np.int64))
    mask = tensors.pop(f"{name}.mask", None)
    if mask is None:
        nonzero = np.ones(count, dtype=bool)
    elif mask.dtype != np.uint8 or mask.shape != ((count + 7) // 8,):
        raise corrupt(f"its mask is not {(count + 7) // 8} bytes")
    else:
        nonzero = np.unpackbits(mask, count=count).astype(bool)
    if int(nonzero.sum()) != codes.size:
        raise corrupt(f"{codes.size} codes for {int(nonzero.sum())} nonzero entries")
    values = np.zeros(count, dtype=np.float32)
    values[nonzero] = decode_with_bias(codes, BITS, EXP_BITS, spec["bias"])
    return values.reshape(spec["shape"])


def read(path: Path) -> dict[str, torch.Tensor]:
    """The float32 state in a packed file; a file that is not one, or whose parts disagree, is refused."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise EdgeBertError(f"{path}: unreadable safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise EdgeBertError(f"{path}: not packed weights of format {FORMAT} (format {metadata.get('format')!r})")
    try:
        layout = json.loads(metadata.get("packed", ""))
    except json.JSONDecodeError:
        layout = None
    if not isinstance(layout, dict):
        raise EdgeBertError(f"{path}: corrupt packed layout (not a JSON object)")
    state = {name: _unpack(path, name, spec, tensors) for name, spec in layout.items()}
    state.update(tensors)  # the float tensors: what the packed ones did not claim
    return {name: torch.from_numpy(np.ascontiguousarray(values)) for name, values in state.items()}
