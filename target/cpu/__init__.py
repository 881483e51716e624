"""Default CPU schedules: what dlight does for GPUs, for the kernels BERT-family encoders produce."""

from .matmul import schedule_parameters
from .pipeline import cpu_passes, cpu_pipeline, schedule_rules, unscheduled_functions

__all__ = ["cpu_passes", "cpu_pipeline", "schedule_parameters", "schedule_rules", "unscheduled_functions"]
