"""Shared helpers for the tests (not a test module; tests/conftest.py puts this folder on
``sys.path`` for the per-package test folders)."""
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]   # the repository


def central_difference(f, h):
    """``(f(h) - f(-h)) / (2 h)`` for ``f`` of a step (tensor or float result), without
    gradients: the one finite-difference formula the gradient tests share."""
    with torch.no_grad():
        return (float(f(h)) - float(f(-h))) / (2 * h)


def directional_fd_check(loss_fn, inputs, grads, h_rel=1e-6, n_dirs=3, seed=0, scale=None):
    """Compare analytic directional derivatives with central finite differences.

    loss_fn(*inputs) -> float; grads: analytic gradients (tensors) matching inputs (None to skip).
    Returns the list of (analytic, numeric, relative error).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    base = [t.detach().clone() for t in inputs]
    for i, (t, gr) in enumerate(zip(base, grads)):
        if gr is None:
            continue
        for _ in range(n_dirs):
            d = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if scale is not None and scale[i] is not None:
                d = d * scale[i]
            mag = t.abs().max().item() if t.numel() else 1.0
            h = h_rel * max(mag, 1e-3) / max(d.abs().max().item(), 1e-30)
            plus = [b + h * d if j == i else b for j, b in enumerate(base)]
            minus = [b - h * d if j == i else b for j, b in enumerate(base)]
            num = (loss_fn(*plus) - loss_fn(*minus)) / (2 * h)
            ana = float((gr * d).sum())
            err = abs(ana - num) / max(abs(ana), abs(num), 1e-300)
            out.append((ana, num, err))
    return out


def lattice(center, size, spacing):
    size = np.broadcast_to(np.asarray(size, float), (3,))
    n = np.maximum(1, np.round(size / spacing).astype(int))
    axes = [c - s / 2 + (np.arange(k) + 0.5) * s / k for c, s, k in zip(center, size, n)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def check_model_file_errors(load, saved, kind, other_format):
    """``load(path)`` of a learned model raises ``InvalidModel`` naming the problem for a
    missing file, junk bytes, ``saved`` (a good file) cut in half, and a file of
    ``other_format``; ``kind``: the model's own format name after ``diffsim-``."""
    from diffsim.learned.model_file import InvalidModel
    folder = saved.parent
    with pytest.raises(InvalidModel, match="does not exist"):
        load(folder / "missing.pt")
    (folder / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InvalidModel, match="not a readable model file"):
        load(folder / "junk.pt")
    data = saved.read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match="not a readable model file"):
        load(folder / "cut.pt")
    torch.save({"format": other_format}, folder / "other.pt")
    with pytest.raises(InvalidModel, match=f"not a diffsim-{kind} file"):
        load(folder / "other.pt")
