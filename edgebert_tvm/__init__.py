"""edgebert-tvm: compile BERT-family encoders the EdgeBERT way with Apache TVM."""

__version__ = "0.1.0"
