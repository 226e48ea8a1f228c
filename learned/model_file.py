"""Model files of diffsim's learned surrogates: ``torch.save`` dictionaries written
atomically and read with ``weights_only=True`` (no code runs on load), tagged with a
``format`` name and a ``version``; a bad file gets an :class:`InvalidModel` naming what is
wrong."""
from __future__ import annotations

from pathlib import Path

import torch

from diffsim.errors import InvalidScene


class InvalidModel(InvalidScene):
    """A model file is missing, corrupt, of another format or of a newer version."""


def write_model_file(path, blob: dict) -> None:
    """Write ``blob`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    from diffsim.io import _atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)


def read_model_file(path, fmt: str, version: int, required, how_to_make: str) -> dict:
    """The dictionary of the model file ``path`` of format ``fmt`` (at most ``version``),
    checked to hold the ``required`` keys; ``how_to_make`` ends the missing-file message."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModel(f"model {str(path)!r} does not exist; {how_to_make}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise InvalidModel(f"{path}: not a readable model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise InvalidModel(f"{path}: not a {fmt} file (format {blob.get('format') if isinstance(blob, dict) else None!r})")
    if int(blob.get("version", 0)) > version:
        raise InvalidModel(f"{path}: version {blob['version']} is newer than this diffsim ({version}); upgrade diffsim")
    missing = [k for k in required if k not in blob]
    if missing:
        raise InvalidModel(f"{path}: lacks {missing}")
    return blob


def resolve_config(configs: dict, config, overrides: dict, what: str) -> dict:
    """A configuration: the named entry of ``configs`` (or a dict) with ``overrides``
    applied; unknown keys are an :class:`InvalidModel` error naming the known ones."""
    cfg = dict(configs[config]) if isinstance(config, str) else dict(config)
    known = set(next(iter(configs.values())))
    unknown = set(overrides) - known
    if unknown:
        raise InvalidModel(f"unknown {what} options {sorted(unknown)}; known: {sorted(known)}")
    cfg.update(overrides)
    return cfg


def instantiate(path, what: str, make, blob: dict, dtype):
    """``make()`` with the weights of ``blob`` loaded, in ``dtype``; a mismatch is an
    :class:`InvalidModel` naming the file and ``what`` it should be."""
    try:
        model = make()
        model.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InvalidModel(f"{path}: does not match this diffsim's {what} ({type(exc).__name__}: {exc})") from None
    return model.to(dtype)
