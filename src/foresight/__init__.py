"""foresight: on-policy distillation of language models, the analysis of what training does to the
weights ("foresight"), and EffOPD weight extrapolation (arXiv 2605.11739)."""

__version__ = "0.1.0"
