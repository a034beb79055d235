"""The OPD engine: rollout (student sampling), scoring, losses and the one training loop."""
