"""The glue between Hydra configs and gptlab: one function per entry script.

Everything Hydra- or OmegaConf-specific lives here and in the root scripts; the model, data
and Lightning modules take plain Python values.
"""
