"""Players: the perturbation split into units (grid cells or user masks)."""

from __future__ import annotations

import torch


def grid_cells(height: int, width: int, grid: int, device="cpu") -> torch.Tensor:
    """Cell index of every pixel for a grid×grid partition: LongTensor (H, W) with values in [0, grid²).

    Cells are as equal as possible when the size is not a multiple of the grid (row/col boundaries at
    floor(k·H/grid)).
    """
    if grid < 1 or grid > min(height, width):
        raise ValueError(f"grid must be in [1, {min(height, width)}] for a {height}x{width} image, "
                         f"got {grid}")
    rows = (torch.arange(height, device=device) * grid) // height
    cols = (torch.arange(width, device=device) * grid) // width
    return rows[:, None] * grid + cols[None, :]


def grid_masks(height: int, width: int, grid: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """One mask per cell: (grid², 1, H, W), 1 inside the cell, 0 elsewhere."""
    cells = grid_cells(height, width, grid, device)
    n = grid * grid
    return (cells[None] == torch.arange(n, device=device)[:, None, None]).to(dtype)[:, None]


def coalition_masks(coalitions: torch.Tensor, cells: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Pixel masks for coalitions.

    coalitions: bool/0-1 tensor (..., n) over players; cells: LongTensor (H, W) of cell indices.
    Returns (..., 1, H, W): 1 where the pixel's cell is in the coalition.
    """
    c = coalitions.to(dtype)
    return c[..., cells][..., None, :, :]
