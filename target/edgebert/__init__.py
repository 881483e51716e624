"""The EdgeBERT accelerator as a BYOC target: patterns, partitioning, codegen, the chip's arithmetic,
its cycle/energy model and configuration, DVFS and the report. Importing `partition` registers
`relax.ext.edgebert`."""
