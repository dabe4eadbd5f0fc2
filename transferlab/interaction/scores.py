"""Scalar scores s(logits, y) of the source model used as game values."""

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
    """log p_y / (1 − p_y), computed stably as z_y − logsumexp_{c≠y} z_c."""
    z_y = logits.gather(-1, y[..., None])[..., 0]
    rest = logits.scatter(-1, y[..., None], float("-inf"))
    return z_y - torch.logsumexp(rest, -1)


def get_score(name: str):
    if name == "margin":
        return margin
    if name == "logodds":
        return logodds
    raise ValueError(f"unknown score {name!r}; choose one of {SCORES}")
