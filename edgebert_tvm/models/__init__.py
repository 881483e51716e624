"""EdgeBERT models in PyTorch (modeling), their checkpoint directories (checkpoint) and built-ins."""
