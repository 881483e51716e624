"""Redundant data approximation (docs/ARCHITECTURE.md, "Redundant data approximation (RDA)"), in one place:

- `codec.py`: the codec (zero / repeated / two-base groups within a threshold, exact otherwise), numpy only;
  its API is re-exported here (`rda.encode`, `rda.decode`, ...);
- `weight_store.py`: weights kept compressed in the artifact and decoded into TVM's tensor cache at load;
- `activations.py`: the accelerator's activation buffers stored the RDA way, measured on real sentences
  (PyTorch; imported only where it is used).
The pass that applies it to a compiled model is `passes/approximate_redundant_data.py`.
"""

from .codec import (DEFAULT_GRANULARITY, FLOAT_GRID, LAYER, Encoded, Granularity, Pattern, TensorReport, approximate,
                    check_granularity, check_threshold, compressed_nbytes, decode, encode, report, summarize)

__all__ = ["DEFAULT_GRANULARITY", "FLOAT_GRID", "LAYER", "Encoded", "Granularity", "Pattern", "TensorReport",
           "approximate", "check_granularity", "check_threshold", "compressed_nbytes", "decode", "encode", "report",
           "summarize"]
