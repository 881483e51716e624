"""Target-independent EdgeBERT passes over Relax and TIR, one module per pass, each named `edgebert.<Name>`.

Graph passes in pipeline order (docs/ARCHITECTURE.md, "Pipeline order"), then the lowering passes
every target runs first. Passes tied to one target live under it: FoldSparsity and FastMath in
`target/cpu/`, QuantizeForAccelerator in `target/edgebert/`; ApplyTuningRecords in `tuning/`.
"""

from .fold_attention_span import FoldAttentionSpan
from .fuse_qkv import FuseQKV
from .quantize_weights_adaptivfloat import QuantizeWeightsAdaptivFloat
from .approximate_redundant_data import ApproximateRedundantData
from .fold_entropy_exit import FoldEntropyExit
from .lower_adaptivfloat import LowerAdaptivFloat
from .canonicalize import Canonicalize

__all__ = ["FoldAttentionSpan", "FuseQKV", "QuantizeWeightsAdaptivFloat", "ApproximateRedundantData", "FoldEntropyExit",
           "LowerAdaptivFloat", "Canonicalize"]
