"""The EdgeBERT training recipe: fine-tuning with distillation, spans and pruning, then off-ramps."""
