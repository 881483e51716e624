"""`custom[adaptivfloat]N` as a TVM datatype.

TVM 0.25 removed bring-your-own-datatypes, but its dtype parser still asks two FFI hooks,
`dtype.get_custom_type_code` and `dtype.get_custom_type_name`, about `custom[...]` names (docs/ARCHITECTURE.md,
"TVM 0.27 facts"). Registering them lets TE and TIR buffers carry AdaptivFloat; nothing in TVM lowers such a
type, so `edgebert.LowerAdaptivFloat` does. A dtype holds only a type code and a width, so the exponent
bits and the per-tensor bias travel beside it: a PrimFunc attribute mapping buffer names to formats.
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi

from ..errors import EdgeBertError
from .quantizer import check_format

TYPE_NAME = "adaptivfloat"
TYPE_CODE = 150  # custom codes are 129..255 (DLPack's kDLExtCustom range in TVM)
METADATA_ATTR = "edgebert.adaptivfloat"  # PrimFunc attr: {buffer name: [bits, exp_bits, bias]}

_CODE_HOOK = "dtype.get_custom_type_code"
_NAME_HOOK = "dtype.get_custom_type_name"
_TYPES = {TYPE_NAME: TYPE_CODE}


@dataclasses.dataclass(frozen=True)
class AdaptivFloatFormat:
    """One tensor's AdaptivFloat format: width, exponent bits and the fitted exponent bias."""

    bits: int
    exp_bits: int
    bias: int

    def __post_init__(self) -> None:
        check_format(self.bits, self.exp_bits)

    @property
    def man_bits(self) -> int:
        return self.bits - 1 - self.exp_bits

    @property
    def dtype(self) -> str:
        return dtype(self.bits)

    @property
    def storage_dtype(self) -> str:
        """The integer type that holds the codes in memory."""
        return "uint8" if self.bits <= 8 else "uint16"

    def as_metadata(self) -> list[int]:
        return [self.bits, self.exp_bits, self.bias]

    @classmethod
    def from_metadata(cls, value) -> "AdaptivFloatFormat":
        bits, exp_bits, bias = (int(v) for v in value)
        return cls(bits, exp_bits, bias)


def _code(name: str) -> int:
    if name not in _TYPES:
        raise EdgeBertError(f"unknown custom datatype {name!r} (registered: {sorted(_TYPES)})")
    return _TYPES[name]


def _name(code: int) -> str:
    names = [name for name, c in _TYPES.items() if c == int(code)]
    if not names:
        raise EdgeBertError(f"unknown custom datatype code {code}")
    return names[0]


def register() -> int:
    """Make `custom[adaptivfloat]N` parse (idempotent); returns the type code."""
    if tvm_ffi.get_global_func(_CODE_HOOK, allow_missing=True) is None:
        tvm_ffi.register_global_func(_CODE_HOOK, _code)
        tvm_ffi.register_global_func(_NAME_HOOK, _name)
    elif int(tvm_ffi.get_global_func(_CODE_HOOK)(TYPE_NAME)) != TYPE_CODE:
        raise EdgeBertError(f"{_CODE_HOOK} is registered by someone else and does not know {TYPE_NAME}")
    return TYPE_CODE


def dtype(bits: int) -> str:
    """The dtype string for an N-bit AdaptivFloat, registering the type first."""
    if not isinstance(bits, int) or not 4 <= bits <= 16:
        raise EdgeBertError(f"AdaptivFloat width must be an integer in 4..16 bits, got {bits!r}")
    register()
    return f"custom[{TYPE_NAME}]{bits}"


def is_adaptivfloat(dtype_) -> bool:
    """Whether a dtype (string or dtype object) is an AdaptivFloat (False for every built-in type).

    Dtype objects are asked for their code: TVM prints custom dtypes without their width.
    """
    code = getattr(dtype_, "type_code", None)
    return (code if code is not None else tvm.DataType(str(dtype_)).type_code) == TYPE_CODE
