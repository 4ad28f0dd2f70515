"""Random inpainting masks (1 = known pixel, 0 = to be filled), drawn from a torch generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rect_mask(h: int, w: int, g: torch.Generator, *, device: torch.device | str = "cpu") -> Tensor:
    """One [1, H, W] mask with a rectangular hole covering 10-60% of each side."""
    mask = torch.ones(1, h, w, device=device)
    rh = max(1, int(h * (0.1 + 0.5 * torch.rand((), generator=g).item())))
    rw = max(1, int(w * (0.1 + 0.5 * torch.rand((), generator=g).item())))
    y = int(torch.randint(0, h - rh + 1, (), generator=g))
    x = int(torch.randint(0, w - rw + 1, (), generator=g))
    mask[:, y : y + rh, x : x + rw] = 0
    return mask


def freeform_mask(
    h: int, w: int, g: torch.Generator, *, device: torch.device | str = "cpu", strokes: int = 3
) -> Tensor:
    """One [1, H, W] mask with a few thick random-walk brush strokes (free-form holes)."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    hole = torch.zeros(h, w, dtype=torch.bool)
    size = min(h, w)
    for _ in range(1 + int(torch.randint(0, strokes, (), generator=g))):
        y, x = (torch.rand(2, generator=g) * torch.tensor([h, w])).tolist()
        radius = size * (0.04 + 0.08 * torch.rand((), generator=g).item())
        angle = 2 * math.pi * torch.rand((), generator=g).item()
        for _ in range(4 + int(torch.randint(0, 6, (), generator=g))):
            angle += (torch.rand((), generator=g).item() - 0.5) * 1.5
            step = size * (0.05 + 0.1 * torch.rand((), generator=g).item())
            for f in (0.25, 0.5, 0.75, 1.0):  # dots along the segment make a continuous stroke
                cy, cx = y + f * step * math.sin(angle), x + f * step * math.cos(angle)
                hole |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            y = min(max(y + step * math.sin(angle), 0.0), h - 1.0)
            x = min(max(x + step * math.cos(angle), 0.0), w - 1.0)
    return (~hole).float()[None].to(device)


def random_masks(
    n: int,
    h: int,
    w: int,
    g: torch.Generator,
    *,
    unmasked_fraction: float = 0.1,
    rect_fraction: float = 0.5,
    device: torch.device | str = "cpu",
) -> Tensor:
    """[N, 1, H, W]: all-known with prob ``unmasked_fraction``, else a rectangle (prob
    ``rect_fraction``) or free-form strokes."""
    out = []
    for _ in range(n):
        u = torch.rand((), generator=g).item()
        if u < unmasked_fraction:
            out.append(torch.ones(1, h, w, device=device))
        elif u < unmasked_fraction + (1 - unmasked_fraction) * rect_fraction:
            out.append(rect_mask(h, w, g, device=device))
        else:
            out.append(freeform_mask(h, w, g, device=device))
    return torch.stack(out)
