"""Scalar scores s(logits, y) of the source model used as game values, larger = more adversarial."""

from __future__ import annotations

import torch

SCORES = ("margin", "logodds")


def other_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmax over classes c != y, per row."""
    masked = logits.detach().clone()
    masked.scatter_(-1, y[..., None], float("-inf"))
    return masked.argmax(-1)


def margin(logits: torch.Tensor, y: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """max_{c≠y} z_c − z_y (or z_other − z_y with a fixed other class). Positive = misclassified."""
    z_y = logits.gather(-1, y[..., None])[..., 0]
    if other is None:
        masked = logits.clone()
        masked = masked.scatter(-1, y[..., None], float("-inf"))
        z_o = masked.max(-1).values
    else:
        z_o = logits.gather(-1, other[..., None])[..., 0]
    return z_o - z_y


def logodds(logits: torch.Tensor, y: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """log (1 − p_y) / p_y, the negated log-odds of the true class, computed stably as
    logsumexp_{c≠y} z_c − z_y. Positive = misclassified-leaning (p_y < 1/2); ``other`` is ignored."""
    z_y = logits.gather(-1, y[..., None])[..., 0]
    rest = logits.scatter(-1, y[..., None], float("-inf"))
    return torch.logsumexp(rest, -1) - z_y

