"""Shapley interactions between perturbation units: players, games, estimators, the IR loss."""
