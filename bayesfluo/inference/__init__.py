"""Inference on the model: the amortized guide and its training, NUTS reference posteriors,
the Laplace refinement and the baseline retrievals (FLD, SFM, OE)."""
