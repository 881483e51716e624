"""Target-independent EdgeBERT passes over Relax and TIR, one module per pass, each named `edgebert.<Name>`.

Graph passes in pipeline order (docs/ARCHITECTURE.md, "Pipeline order"), then the lowering passes
every target runs first (and DeduplicatePrimFuncs, which the CPU lowering runs, and
FoldConstantSubgraphs, which the edgebert target's partitioning runs). Passes tied to one
target live under it: FoldSparsity, FastMath and FoldConstantCalls in `target/cpu/`,
QuantizeForAccelerator in `target/edgebert/`; ApplyTuningRecords in `tuning/`. `banded_attention` holds
the TE kernels FoldAttentionSpan emits for distance spans.
"""

from .fold_attention_span import FoldAttentionSpan
from .fuse_qkv import FuseQKV
from .quantize_weights_adaptivfloat import QuantizeWeightsAdaptivFloat
from .approximate_redundant_data import ApproximateRedundantData
from .fold_entropy_exit import FoldEntropyExit, SetExitThresholds
from .lower_adaptivfloat import LowerAdaptivFloat
from .canonicalize import Canonicalize
from .fold_constant_transposes import FoldConstantTransposes
from .fold_constant_subgraphs import FoldConstantSubgraphs
from .deduplicate_prim_funcs import DeduplicatePrimFuncs

__all__ = ["FoldAttentionSpan", "FuseQKV", "QuantizeWeightsAdaptivFloat", "ApproximateRedundantData", "FoldEntropyExit",
           "SetExitThresholds", "LowerAdaptivFloat", "Canonicalize", "FoldConstantTransposes", "FoldConstantSubgraphs",
           "DeduplicatePrimFuncs"]
