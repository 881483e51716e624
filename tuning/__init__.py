"""MetaSchedule tuning of the kernels that the EdgeBERT pipeline emits."""
