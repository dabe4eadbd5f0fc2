"""Imports every built-in component module so that each registers itself."""

import importlib

BUILTIN_MODULES = ("momentum", "variance_tuning", "variance_reduction", "input_diversity",
                   "translation_invariance", "skip_gradient", "interaction_reduction", "objectives",
                   "warm_start",
                   # the field's baseline set (one file each)
                   "scale_invariance", "admix", "spectrum_simulation", "block_shuffle_rotation",
                   "structure_invariance", "gradient_norm_penalty", "gradient_relevance",
                   "reverse_perturbation",
                   "linear_backprop", "intermediate_level", "feature_importance", "neuron_attribution",
                   "variance_reduced_ensemble", "expected_flatness")

for _module in BUILTIN_MODULES:
    try:
        importlib.import_module(f"transferlab.attacks.{_module}")
    except ModuleNotFoundError as exc:  # a module not written yet must not break the others
        if exc.name != f"transferlab.attacks.{_module}":
            raise
