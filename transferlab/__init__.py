"""transferlab: transfer-based adversarial attacks and their Shapley-interaction interpretation."""

__version__ = "0.1.0"
