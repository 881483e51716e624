"""AdaptivFloat reference quantizer (Tambe et al., DAC 2020; docs/ARCHITECTURE.md, "AdaptivFloat"), numpy only.

An n-bit AdaptivFloat number is sign | e exponent bits | m = n-1-e mantissa bits. The exponent bias is fitted
to each tensor so that the largest exponent covers max|x|; the all-zero code is zero (no denormals). Every
function here computes in float64, where each step is exact, and returns float32.

The accelerator's 8-bit format (EdgeBERT's reference hardware) is the e=3 case with a 3-bit bias register b:
value = (-1)^s * 2^(exp + b - 10) * (1 + man/16), exp = man = 0 meaning zero, so bias = b - HW8_BIAS_OFFSET.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeBertError

HW8_EXP_BITS = 3
HW8_MAN_BITS = 4
HW8_BIAS_OFFSET = 10
HW8_BIAS_MAX = 7  # the bias register is 3 bits wide


def check_format(bits: int, exp_bits: int) -> None:
    """Reject formats with no mantissa bit or outside the 4..16-bit range (EdgeBertError, one line)."""
    if not isinstance(bits, (int, np.integer)) or not 4 <= bits <= 16:
        raise EdgeBertError(f"AdaptivFloat width must be an integer in 4..16 bits, got {bits!r}")
    if not isinstance(exp_bits, (int, np.integer)) or not 1 <= exp_bits < bits - 1:
        raise EdgeBertError(f"AdaptivFloat exponent bits must be in 1..{bits - 2} for {bits} bits, got {exp_bits!r}")


def _finite_abs(x: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.asarray(x, dtype=np.float64))
    if not np.all(np.isfinite(magnitude)):
        raise EdgeBertError("AdaptivFloat cannot quantize NaN or infinite values")
    return magnitude


def _floor_log2(magnitude: np.ndarray) -> np.ndarray:
    """floor(log2(v)) exactly, for v > 0 (frexp gives v = f * 2^k with f in [0.5, 1))."""
    return np.frexp(magnitude)[1].astype(np.int64) - 1


def fitted_bias(x: np.ndarray, exp_bits: int) -> int:
    """Per-tensor exponent bias: the largest exponent, floor(log2(max|x|)), is bias + 2^e - 1 (0 for all zeros)."""
    peak = float(_finite_abs(x).max(initial=0.0))
    if peak == 0.0:
        return 0
    return int(_floor_log2(np.array(peak))) - (2**exp_bits - 1)


def value_range(bits: int, exp_bits: int, bias: int) -> tuple[float, float]:
    """(smallest, largest) nonzero magnitude of the format with this bias."""
    check_format(bits, exp_bits)
    man_bits = bits - 1 - exp_bits
    min_value = 2.0**bias * (1 + 2.0**-man_bits)
    max_value = 2.0 ** (bias + 2**exp_bits - 1) * (2 - 2.0**-man_bits)
    return min_value, max_value


def _grid(x: np.ndarray, bits: int, exp_bits: int, bias: int) -> np.ndarray:
    """Signed float64 values on the grid: flush/raise near zero, saturate, round the fraction half to even."""
    magnitude = _finite_abs(x)
    man_bits = bits - 1 - exp_bits
    min_value, max_value = value_range(bits, exp_bits, bias)
    out = np.zeros_like(magnitude)
    normal = magnitude >= min_value
    v = magnitude[normal]
    exponent = _floor_log2(v)
    scale = np.ldexp(1.0, exponent - man_bits)
    out[normal] = np.minimum(np.rint(v / scale) * scale, max_value)  # rint: round half to even
    out[(magnitude >= min_value / 2) & ~normal] = min_value
    return np.copysign(out, np.asarray(x, dtype=np.float64))


def quantize_with_bias(x: np.ndarray, bits: int, exp_bits: int, bias: int) -> np.ndarray:
    """x rounded onto the AdaptivFloat grid of a given exponent bias (float32, same shape)."""
    check_format(bits, exp_bits)
    return _grid(x, bits, exp_bits, int(bias)).astype(np.float32)


def quantize(x: np.ndarray, bits: int, exp_bits: int) -> np.ndarray:
    """x rounded onto the AdaptivFloat grid with the bias fitted to max|x| (float32, same shape)."""
    check_format(bits, exp_bits)
    return _grid(x, bits, exp_bits, fitted_bias(x, exp_bits)).astype(np.float32)


def encode_with_bias(x: np.ndarray, bits: int, exp_bits: int, bias: int) -> np.ndarray:
    """Codes (uint8 up to 8 bits, else uint16) sign | exponent field (exponent - bias) | mantissa."""
    check_format(bits, exp_bits)
    man_bits = bits - 1 - exp_bits
    values = _grid(x, bits, exp_bits, int(bias))
    magnitude = np.abs(values)
    nonzero = magnitude > 0
    exponent = np.where(nonzero, _floor_log2(np.where(nonzero, magnitude, 1.0)), int(bias))
    mantissa = np.where(nonzero, np.ldexp(magnitude, man_bits - exponent) - 2**man_bits, 0).astype(np.int64)
    sign = (np.signbit(values) & nonzero).astype(np.int64)
    codes = (sign << (bits - 1)) | ((exponent - int(bias)) << man_bits) | mantissa
    return codes.astype(np.uint8 if bits <= 8 else np.uint16)


def decode_with_bias(codes: np.ndarray, bits: int, exp_bits: int, bias: int) -> np.ndarray:
    """float32 values of codes written by `encode_with_bias` (exponent and mantissa fields 0 mean zero)."""
    check_format(bits, exp_bits)
    man_bits = bits - 1 - exp_bits
    c = np.asarray(codes).astype(np.int64)
    mantissa = c & (2**man_bits - 1)
    exponent = (c >> man_bits) & (2**exp_bits - 1)
    magnitude = np.ldexp(1.0 + mantissa / 2.0**man_bits, exponent + int(bias))
    magnitude[(exponent == 0) & (mantissa == 0)] = 0.0
    sign = np.where((c >> (bits - 1)) & 1, -1.0, 1.0)
    return (sign * magnitude).astype(np.float32)


def encode(x: np.ndarray, bits: int, exp_bits: int) -> tuple[np.ndarray, int]:
    """(codes, fitted bias): the storage form of `quantize(x, bits, exp_bits)`."""
    bias = fitted_bias(x, exp_bits)
    return encode_with_bias(x, bits, exp_bits, bias), bias


def hw8_register(x: np.ndarray) -> int:
    """The accelerator's 3-bit bias register for x: the fitted bias plus the offset, clamped to 0..7.

    Tensors with max|x| outside [2^-3, 2^5) cannot get their fitted bias; they take the nearest register
    value, so large values saturate and small ones flush to zero.
    """
    return int(np.clip(fitted_bias(x, HW8_EXP_BITS) + HW8_BIAS_OFFSET, 0, HW8_BIAS_MAX))


def hw8_encode(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint8 codes sign | 3 exponent | 4 mantissa bits, 3-bit bias register) in the accelerator's format."""
    register = hw8_register(x)
    return encode_with_bias(x, 8, HW8_EXP_BITS, register - HW8_BIAS_OFFSET), register


def hw8_decode(codes: np.ndarray, bias: int) -> np.ndarray:
    """float32 values of the accelerator's 8-bit codes under bias register `bias` (0..7)."""
    if not 0 <= int(bias) <= HW8_BIAS_MAX:
        raise EdgeBertError(f"the AdaptivFloat bias register is 3 bits (0..7), got {bias}")
    return decode_with_bias(np.asarray(codes, dtype=np.uint8), 8, HW8_EXP_BITS, int(bias) - HW8_BIAS_OFFSET)
