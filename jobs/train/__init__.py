"""The training job, ``visor train``: budget-sampled training of the universal VISOR network on Ray Train."""
