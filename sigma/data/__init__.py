"""Training data: the synthetic-edit engine (`sigma.data.synth`)."""
