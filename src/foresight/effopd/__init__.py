"""EffOPD: validation-gated weight extrapolation along the current update direction (paper §5)."""
