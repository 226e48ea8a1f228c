"""File input and output for diffsim: atomic writes, JSON, PLY/VTU frames (meshio),
checkpoints, PNG images (:func:`read_png`, Pillow).

Everything here is plain numpy + the standard library (meshio for the mesh formats).

Every writer is *atomic*: the data goes to a temporary file in the destination's
directory, which is then moved over the destination with :func:`os.replace`. A reader
(ParaView watching a folder, a second process, a resumed run) therefore never sees a
half-written file, and a crash mid-write leaves the previous version intact. Parent
directories are created as needed.

Conventions: point coordinates are in metres, ``(N, 3)``; array shapes are given per
function.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import DiffsimError

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "json_default",
    "write_ply",
    "write_vtu",
    "save_checkpoint",
    "load_checkpoint",
    "frame_name",
]

# Key of the JSON metadata entry inside a checkpoint .npz (not usable as an array name).
_META_KEY = "__diffsim_meta__"
_CHECKPOINT_FORMAT = 1


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: temporary files from mkstemp are 0600; the final file gets the
# permissions a plain open() would have given it (0666 & ~umask).
_UMASK = _current_umask()


class CheckpointError(DiffsimError, ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a diffsim checkpoint."""


# --------------------------------------------------------------------------- atomic


@contextmanager
def _atomic_path(path, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    The temporary name is ``.<name>.<random><suffix>`` in the same directory (so that
    ``os.replace`` is a same-filesystem rename). On any exception the temporary file is
    removed and the destination is left untouched.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # Keep the real extension last (meshio picks formats by it); mark the name as temporary.
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp.",
                               suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + ``os.replace``).

    Args:
        path: destination file (str or Path); parent directories are created.
        data: the bytes to write (any bytes-like object).

    The temporary file is flushed and fsync'ed before the rename, so after a crash the
    destination holds either the old or the complete new content.
    """
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write the string ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def json_default(obj: Any) -> Any:
    """``json.dump`` ``default=`` hook: numpy scalars/arrays and friends to plain Python.

    Handles numpy integer/floating/bool/complex scalars (complex -> ``[re, im]``), numpy
    arrays (``tolist()``), ``pathlib.Path`` (``str``), sets (sorted list when sortable),
    bytes (utf-8 text) and any object with a ``tolist()`` method (e.g. torch tensors on
    CPU). Raises ``TypeError`` for anything else, as ``json`` expects.
    """
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (complex, np.complexfloating)):
        return [float(obj.real), float(obj.imag)]
    if isinstance(obj, np.ndarray):
        if np.iscomplexobj(obj):
            return np.stack([obj.real, obj.imag], axis=-1).tolist()
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace")
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    numpy scalars and arrays (and the other types of :func:`json_default`) are converted to
    plain Python. Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON
    dialect, which ``json.load`` reads back). A trailing newline is added.
    """
    text = json.dumps(obj, indent=indent, default=json_default)
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------- meshes

_PLY_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
               np.uint64, np.float32, np.float64)


def _as_points(points) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float64)
    return np.ascontiguousarray(pts)


def _check_point_data(point_data, n: int) -> dict[str, np.ndarray]:
    out = {}
    for key, value in (point_data or {}).items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(
                f"point_data[{key!r}] must have shape (N,) or (N, k) with N = {n} points, "
                f"got {arr.shape}")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        out[str(key)] = np.ascontiguousarray(arr)
    return out


def write_ply(path, points, point_data: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a binary PLY point cloud (through meshio), atomically.

    Args:
        path: destination ``.ply`` file; parent directories are created.
        points: ``(N, 3)`` float, m. float32 and float64 are kept; other dtypes become
            float64.
        point_data: optional per-point arrays, ``(N,)`` or ``(N, k)``. PLY properties are
            scalars, so an ``(N, k)`` array ``"v"`` is stored as the ``k`` properties
            ``v_0 ... v_{k-1}`` (meshio would otherwise drop it). bool becomes uint8,
            other unsupported dtypes (float16, ...) become float64.

    The cells are one ``"vertex"`` block (one single-index face per point), so the file
    reads back with ``meshio.read`` as points + vertex cells. Read back with
    ``meshio.read(path)``; ParaView opens it directly.
    """
    import meshio

    pts = _as_points(points)
    n = pts.shape[0]
    data = {}
    for key, arr in _check_point_data(point_data, n).items():
        if arr.dtype.type not in _PLY_DTYPES:
            arr = arr.astype(np.float64)
        if arr.ndim == 1:
            data[key] = arr
        else:
            flat = arr.reshape(n, int(np.prod(arr.shape[1:])))   # n may be 0 (a drained hopper)
            for j in range(flat.shape[1]):
                data[f"{key}_{j}"] = np.ascontiguousarray(flat[:, j])
    # int32 indices: PLY readers do not all accept int64, and meshio would warn + cast.
    cells = [("vertex", np.arange(n, dtype=np.int32).reshape(n, 1))] if n else []
    mesh = meshio.Mesh(pts, cells, point_data=data)
    with _atomic_path(path, suffix=".ply") as tmp:
        meshio.write(tmp, mesh, file_format="ply", binary=True)


def _split_cell_data(cell_data, blocks: list[tuple[str, np.ndarray]]) -> dict[str, list]:
    sizes = [len(c) for _, c in blocks]
    out = {}
    for key, value in (cell_data or {}).items():
        if isinstance(value, (list, tuple)):
            parts = [np.asarray(v) for v in value]
            if len(parts) != len(blocks) or any(len(p) != s for p, s in zip(parts, sizes)):
                raise ValueError(
                    f"cell_data[{key!r}] given per block must have one array per cell block "
                    f"with sizes {sizes}, got {[p.shape for p in parts]}")
        else:
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != sum(sizes):
                raise ValueError(
                    f"cell_data[{key!r}] must have one row per cell ({sum(sizes)} cells in "
                    f"blocks {[t for t, _ in blocks]}), got shape {arr.shape}")
            parts = np.split(arr, np.cumsum(sizes)[:-1])
        parts = [p.astype(np.uint8) if p.dtype == np.bool_ else np.ascontiguousarray(p)
                 for p in parts]
        out[str(key)] = parts
    return out


def write_vtu(path, points, cells: Mapping[str, np.ndarray],
              point_data: Mapping[str, np.ndarray] | None = None,
              cell_data: Mapping[str, Any] | None = None) -> None:
    """Write a VTK unstructured grid (``.vtu``, through meshio), atomically.

    Args:
        path: destination ``.vtu`` file; parent directories are created.
        points: ``(N, 3)`` float, m.
        cells: cell blocks by meshio type name, e.g. ``{"tetra": (M, 4) int}`` or
            ``{"triangle": (M, 3) int}``; indices are 0-based into ``points``.
        point_data: optional per-point arrays ``(N,)`` or ``(N, k)`` (e.g. velocity
            ``(N, 3)``, m/s).
        cell_data: optional per-cell arrays. Either one array with one row per cell over
            all blocks in ``cells`` order (``(sum M,)`` or ``(sum M, k)``), or a list with
            one array per block (meshio's form).

    Raises:
        ValueError: shapes that do not match, or cell indices out of range.
    """
    import meshio

    pts = _as_points(points)
    n = pts.shape[0]
    blocks = []
    for ctype, conn in cells.items():
        conn = np.asarray(conn)
        if conn.ndim != 2:
            raise ValueError(f"cells[{ctype!r}] must be a 2-D (M, k) index array, got {conn.shape}")
        if not np.issubdtype(conn.dtype, np.integer):
            raise ValueError(f"cells[{ctype!r}] must hold integer indices, got {conn.dtype}")
        if conn.size and (conn.min() < 0 or conn.max() >= n):
            raise ValueError(
                f"cells[{ctype!r}] has indices in [{conn.min()}, {conn.max()}], outside the "
                f"{n} points")
        blocks.append((str(ctype), np.ascontiguousarray(conn)))
    mesh = meshio.Mesh(pts, blocks, point_data=_check_point_data(point_data, n),
                       cell_data=_split_cell_data(cell_data, blocks))
    with _atomic_path(path, suffix=".vtu") as tmp:
        meshio.write(tmp, mesh, file_format="vtu")


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
    """Save named arrays plus JSON metadata to one ``.npz`` file, atomically.

    Args:
        path: destination file (conventionally ``.npz``; the name is used as given).
        arrays: name -> array. Stored uncompressed and bit-exact (dtype, shape and bytes
            round-trip). Object arrays are refused (they would need pickle).
        meta: JSON-serializable metadata (numpy values allowed, see
            :func:`json_default`), e.g. ``{"step": 1200, "dt": 1e-4, "material": {...}}``.

    The metadata is stored as a JSON string entry named ``"__diffsim_meta__"``, which is
    therefore not allowed as an array name.
    """
    payload = {}
    for key, value in arrays.items():
        key = str(key)
        if key == _META_KEY:
            raise ValueError(f"array name {_META_KEY!r} is reserved for checkpoint metadata")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"checkpoint array {key!r} has dtype object; store numeric arrays only")
        payload[key] = arr
    meta_text = json.dumps({"format": _CHECKPOINT_FORMAT, "meta": dict(meta or {})},
                           default=json_default)
    payload[_META_KEY] = np.array(meta_text)
    with _atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(arrays, meta)``: name -> numpy array (fully read into memory, bit-exact) and the
        metadata dict.

    Raises:
        CheckpointError (a ``ValueError``): the file is missing, truncated, corrupt (bad
            zip/CRC) or has no diffsim metadata entry; the message names the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file)")
    try:
        # Own the file handle: np.load leaks it when the zip directory is unreadable.
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CheckpointError(
                    f"checkpoint {path!r} holds a single .npy array, not a diffsim checkpoint "
                    f"(.npz written by save_checkpoint)")
            names = list(npz.files)
            if _META_KEY not in names:
                raise CheckpointError(
                    f"checkpoint {path!r} has no {_META_KEY!r} entry: not a diffsim checkpoint "
                    f"(entries: {names[:10]})")
            arrays = {k: npz[k] for k in names if k != _META_KEY}
            meta_text = str(npz[_META_KEY])
            npz.close()
        record = json.loads(meta_text)
        meta = record["meta"]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            f"delete it or restore it from an earlier copy") from exc
    return arrays, meta


# --------------------------------------------------------------------------- names


def frame_name(prefix: str, index: int, ext: str, width: int = 6) -> str:
    """Zero-padded frame file name: ``frame_name("particles", 12, "ply") -> "particles_000012.ply"``.

    ``ext`` may be given with or without the leading dot. Indices wider than ``width``
    digits are written in full (names then no longer sort lexically).
    """
    ext = ext[1:] if ext.startswith(".") else ext
    index = int(index)
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{prefix}_{index:0{width}d}.{ext}"


def read_png(path) -> np.ndarray:
    """Decode a PNG file into an ``(H, W, C)`` uint8 array (with Pillow).

    ``path`` is a file path or the PNG bytes themselves. ``C`` is 1 (gray), 2 (gray +
    alpha), 3 (RGB) or 4 (RGBA): 16-bit samples are reduced to 8 bits (high byte), 1/2/4-bit
    gray is scaled to 0..255, palette images become RGB (RGBA when the palette has alpha).
    Raises ``ValueError`` for anything that is not a readable PNG.
    """
    from PIL import Image, UnidentifiedImageError
    if isinstance(path, (bytes, bytearray)):
        src, name = io.BytesIO(bytes(path)), "<bytes>"
    else:
        src = name = os.fspath(path)
        if not os.path.exists(name):
            raise FileNotFoundError(f"{name}: no such image file")
    try:
        with Image.open(src) as im:
            if im.format != "PNG":
                raise ValueError(f"{name}: not a PNG file ({im.format}); expected a .png image")
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode.startswith("I"):   # 16-bit gray: the high byte
                img = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            elif im.mode in ("L", "LA", "RGB", "RGBA"):
                img = np.asarray(im, dtype=np.uint8)
            else:
                raise ValueError(f"{name}: unsupported PNG pixel mode {im.mode}")
    except (UnidentifiedImageError, SyntaxError, OSError, EOFError, struct.error, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{name}: not a PNG file or a corrupted one ({exc})") from None
    return np.ascontiguousarray(img if img.ndim == 3 else img[:, :, None], dtype=np.uint8)
