"""A small software renderer for preview images: no GPU, no display, numpy only.

- :func:`render_points` draws point clouds (z-buffered disc splats with depth shading) and
  triangle meshes (flat-shaded, z-buffered) with an orthographic camera, plus a thin gray
  outline of the bottom face of the bounds (the "ground") so orientation is readable.
- :func:`write_png` writes PNGs (Pillow), atomically.
- :func:`write_animation` writes a GIF/MP4 through imageio when it is importable (optional
  dependency) and returns ``False`` otherwise.
- :func:`hstack_images` puts images side by side for comparisons.

Camera convention (matplotlib's ``view_init``): z is up; ``azim`` rotates the viewer about
the z axis from +x towards +y, ``elev`` lifts it above the xy plane; both in degrees. The
camera looks at the centre of ``bounds`` and the projected bounding box is scaled to fit
the image with a margin, so the centre of the bounds lands in the centre of the image.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Sequence

import numpy as np

from .io import _atomic_path, atomic_write_bytes

__all__ = ["render_points", "write_png", "write_animation", "hstack_images"]

_DEFAULT_POINT_COLOR = (31, 119, 180)
_DEFAULT_MESH_COLOR = (200, 200, 200)
_GROUND_COLOR = (150, 150, 150)
_MESH, _POINT = 1, 2  # pixel owner tags
# Candidate pixel writes processed per batch (bounds peak memory at ~100 MB).
_BATCH = 4_000_000


# --------------------------------------------------------------------------- camera


class _View:
    """Orthographic camera: world (m) -> pixel coordinates (x right, y down) and depth.

    ``depth`` is the coordinate along the direction towards the viewer (m): larger is
    nearer.
    """

    def __init__(self, lo, hi, width, height, elev, azim, margin_px):
        e, a = np.radians(elev), np.radians(azim)
        back = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        right = np.array([-np.sin(a), np.cos(a), 0.0])
        up = np.cross(back, right)
        self.right, self.up, self.back = right, up, back
        self.rot = np.stack([right, up, back])  # rows
        self.center = 0.5 * (lo + hi)
        self.width, self.height = int(width), int(height)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        c = (corners - self.center) @ self.rot.T
        half_u = np.abs(c[:, 0]).max()
        half_v = np.abs(c[:, 1]).max()
        avail_x = max(self.width / 2.0 - margin_px, 1.0)
        avail_y = max(self.height / 2.0 - margin_px, 1.0)
        if half_u <= 0 and half_v <= 0:
            half_u = half_v = 1.0  # a single point: any scale works
        sx = avail_x / half_u if half_u > 0 else np.inf
        sy = avail_y / half_v if half_v > 0 else np.inf
        self.scale = float(min(sx, sy))  # px per metre
        self.depth_lo = float(c[:, 2].min())
        self.depth_hi = float(c[:, 2].max())

    def project(self, pts):
        """``pts (N, 3)`` m -> ``(x_px, y_px, depth_m)``, each ``(N,)`` float64."""
        c = (np.asarray(pts, dtype=np.float64) - self.center) @ self.rot.T
        x = self.width / 2.0 + self.scale * c[:, 0]
        y = self.height / 2.0 - self.scale * c[:, 1]
        return x, y, c[:, 2]

    def depth_shade(self, depth):
        """Nearer is brighter: 0.45 at the far side of the bounds, 1.0 at the near side."""
        span = self.depth_hi - self.depth_lo
        if span <= 0:
            return np.ones_like(depth)
        t = np.clip((depth - self.depth_lo) / span, 0.0, 1.0)
        return 0.45 + 0.55 * t


def _as_color_array(color, n, what, default):
    """RGB triple or ``(n, 3)`` array (0-255) -> ``(n, 3)`` float32 or (3,) float32."""
    if color is None:
        color = default
    col = np.asarray(color, dtype=np.float32)
    if col.shape == (3,):
        return col
    if col.shape == (n, 3):
        return col
    raise ValueError(f"{what} color must be an RGB triple (0-255) or an ({n}, 3) array, "
                     f"got shape {col.shape}")


def _zbuffer_write(zbuf, img, pix, depth, colors_fn, owner=None, tag=0):
    """Two-pass z-buffer update for one batch of candidate fragments.

    ``pix`` (K,) flat pixel indices, ``depth`` (K,) float32 (larger = nearer). ``colors_fn(mask)``
    returns the (k, 3) float colors of the fragments selected by ``mask``. Only fragments
    that are the nearest at their pixel (after this batch) are written; ``owner[pixel]``
    (if given) records ``tag`` (what drew the pixel).
    """
    np.maximum.at(zbuf, pix, depth)
    win = depth >= zbuf[pix]  # equal to the max (same float32 values)
    if win.any():
        img[pix[win]] = np.clip(colors_fn(win), 0, 255).astype(np.uint8)
        if owner is not None:
            owner[pix[win]] = tag


# --------------------------------------------------------------------------- meshes


def _raster_mesh(view, zbuf, img, owner, vertices, faces, color):
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"mesh vertices must have shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"mesh faces must have shape (F, 3) (triangles), got {faces.shape}")
    if len(faces) == 0:
        return
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError("mesh faces index outside the vertex array")
    col = _as_color_array(color, len(faces), "mesh", _DEFAULT_MESH_COLOR)
    W, H = view.width, view.height

    X, Y, D = view.project(vertices)
    x0, x1, x2 = X[faces[:, 0]], X[faces[:, 1]], X[faces[:, 2]]
    y0, y1, y2 = Y[faces[:, 0]], Y[faces[:, 1]], Y[faces[:, 2]]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)

    # Flat shading: two-sided Lambert with a light above-right of the viewer.
    v = vertices[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    nn = np.linalg.norm(n, axis=1)
    light = 0.35 * view.right + 0.55 * view.up + 0.75 * view.back
    light /= np.linalg.norm(light)
    lam = np.abs(n @ light) / np.where(nn > 0, nn, 1.0)
    shade = (0.35 + 0.65 * lam).astype(np.float32)
    face_rgb = (col[None, :] if col.ndim == 1 else col) * shade[:, None]
    face_rgb = np.broadcast_to(face_rgb, (len(faces), 3))

    # Pixel-centre bounding boxes, clipped to the image.
    xmin = np.clip(np.ceil(np.minimum(np.minimum(x0, x1), x2) - 0.5), 0, W)
    xmax = np.clip(np.floor(np.maximum(np.maximum(x0, x1), x2) - 0.5), -1, W - 1)
    ymin = np.clip(np.ceil(np.minimum(np.minimum(y0, y1), y2) - 0.5), 0, H)
    ymax = np.clip(np.floor(np.maximum(np.maximum(y0, y1), y2) - 0.5), -1, H - 1)
    ok = np.isfinite(area) & (np.abs(area) > 1e-12) & np.isfinite(D[faces]).all(axis=1)
    xmin, xmax, ymin, ymax = (np.where(ok, v, 0.0) for v in (xmin, xmax, ymin, ymax))
    bw = (xmax - xmin + 1).astype(np.int64)
    bh = (ymax - ymin + 1).astype(np.int64)
    keep = ok & (bw > 0) & (bh > 0)
    ids = np.nonzero(keep)[0]
    if len(ids) == 0:
        return
    counts = bw[ids] * bh[ids]
    inv_area = 1.0 / area

    # Process triangles in batches whose bounding boxes hold at most _BATCH pixels.
    csum = np.cumsum(counts)
    start = 0
    while start < len(ids):
        base = csum[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(csum, base + _BATCH, side="right"))
        stop = max(stop, start + 1)
        t = ids[start:stop]
        cnt = counts[start:stop]
        total = int(cnt.sum())
        tri = np.repeat(np.arange(len(t)), cnt)
        offs = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        local = np.arange(total, dtype=np.int64) - np.repeat(offs, cnt)
        bwt = bw[t][tri]
        px = xmin[t][tri].astype(np.int64) + local % bwt
        py = ymin[t][tri].astype(np.int64) + local // bwt
        tt = t[tri]
        cx = px + 0.5
        cy = py + 0.5
        ax, ay = x0[tt], y0[tt]
        bx, by = x1[tt], y1[tt]
        qx, qy = x2[tt], y2[tt]
        ia = inv_area[tt]
        w1 = ((cx - ax) * (qy - ay) - (qx - ax) * (cy - ay)) * ia
        w2 = ((bx - ax) * (cy - ay) - (cx - ax) * (by - ay)) * ia
        w0 = 1.0 - w1 - w2
        eps = -1e-9
        inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
        if inside.any():
            f = faces[tt[inside]]
            depth = (w0[inside] * D[f[:, 0]] + w1[inside] * D[f[:, 1]]
                     + w2[inside] * D[f[:, 2]]).astype(np.float32)
            pix = (py[inside] * W + px[inside])
            fid = tt[inside]
            _zbuffer_write(zbuf, img, pix, depth, lambda m: face_rgb[fid[m]], owner, _MESH)
        start = stop


# --------------------------------------------------------------------------- points


def _disc_offsets(radius):
    ri = int(np.ceil(radius))
    oy, ox = np.mgrid[-ri:ri + 1, -ri:ri + 1]
    d2 = (ox * ox + oy * oy).ravel()
    # r^2 + r ~ (r + 1/2)^2: pixels whose centre is within ~half a pixel of the disc;
    # r = 1 gives a 3x3 block, r < 1 a single pixel.
    m = d2 <= radius * radius + radius + 1e-9
    ox, oy, d2 = ox.ravel()[m], oy.ravel()[m], d2[m]
    # Sphere-impostor profile: 1 at the centre, > 0 at the rim.
    w = np.sqrt(np.clip(1.0 - d2 / (radius + 0.5) ** 2, 0.0, 1.0))
    return ox.astype(np.int64), oy.astype(np.int64), w


def _splat_points(view, zbuf, img, owner, pts, rgb, radius):
    X, Y, D = view.project(pts)
    W, H = view.width, view.height
    # Clip far-off coordinates so the integer cast cannot overflow (they stay off-image).
    cx = np.floor(np.clip(X, -1e9, 1e9)).astype(np.int64)
    cy = np.floor(np.clip(Y, -1e9, 1e9)).astype(np.int64)
    base_shade = view.depth_shade(D).astype(np.float32)
    ox, oy, w = _disc_offsets(radius)
    K = len(ox)
    world_r = radius / view.scale
    # Keep points whose disc can touch the image.
    ri = int(np.ceil(radius))
    vis = (cx >= -ri) & (cx < W + ri) & (cy >= -ri) & (cy < H + ri) & np.isfinite(D)
    idx = np.nonzero(vis)[0]
    per_batch = max(1, _BATCH // K)
    for s in range(0, len(idx), per_batch):
        b = idx[s:s + per_batch]
        px = (cx[b][:, None] + ox[None, :]).ravel()
        py = (cy[b][:, None] + oy[None, :]).ravel()
        depth = (D[b][:, None] + world_r * w[None, :]).astype(np.float32).ravel()
        pid = np.repeat(b, K)
        kk = np.tile(np.arange(K), len(b))
        inimg = (px >= 0) & (px < W) & (py >= 0) & (py < H)
        if not inimg.all():
            px, py, depth, pid, kk = px[inimg], py[inimg], depth[inimg], pid[inimg], kk[inimg]
        pix = py * W + px
        prof = (0.72 + 0.28 * w).astype(np.float32)

        def colors(m, pid=pid, kk=kk):
            sel = pid[m]
            c = rgb if rgb.ndim == 1 else rgb[sel]
            return c * (base_shade[sel] * prof[kk[m]])[:, None]

        _zbuffer_write(zbuf, img, pix, depth, colors, owner, _POINT)


# --------------------------------------------------------------------------- edges


def _edge_darken(view, zbuf, img, mask, strength, cap_px=4.0):
    """Eye-dome-lighting style shading: darken pixels whose neighbours lie farther away.

    For each pixel in ``mask`` (H*W bool: the pixels drawn by points), sums over its 4 neighbours how much farther each one is (in
    px, capped at ``cap_px``; background counts as the cap) and multiplies the color by
    ``exp(-strength * sum)``. Silhouettes and depth steps get dark outlines and surfaces
    tilted away from the viewer get slightly darker, which makes point clouds read as 3D.
    """
    W, H = view.width, view.height
    z = zbuf.reshape(H, W).astype(np.float64) * view.scale
    fg = mask.reshape(H, W) & np.isfinite(z)
    if not fg.any():
        return
    zp = np.pad(z, 1, constant_values=-np.inf)
    acc = np.zeros((H, W))
    with np.errstate(invalid="ignore"):
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            nb = zp[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
            acc += np.clip(z - nb, 0.0, cap_px)
    f = np.exp(-strength * acc[fg]).astype(np.float32)
    flat = img.reshape(H, W, 3)
    flat[fg] = (flat[fg] * f[:, None] + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- ground


def _draw_ground(view, zbuf, img, lo, hi, color=_GROUND_COLOR):
    z = lo[2]
    corners = np.array([[lo[0], lo[1], z], [hi[0], lo[1], z], [hi[0], hi[1], z],
                        [lo[0], hi[1], z]])
    W, H = view.width, view.height
    span = max(view.depth_hi - view.depth_lo, 1e-12)
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        xa, ya, _ = view.project(a[None])
        xb, yb, _ = view.project(b[None])
        n = int(np.ceil(2.0 * max(abs(xb[0] - xa[0]), abs(yb[0] - ya[0])))) + 2
        t = np.linspace(0.0, 1.0, n)[:, None]
        x, y, d = view.project(a[None] * (1 - t) + b[None] * t)
        px = np.floor(np.clip(x, -1e9, 1e9)).astype(np.int64)
        py = np.floor(np.clip(y, -1e9, 1e9)).astype(np.int64)
        m = (px >= 0) & (px < W) & (py >= 0) & (py < H)
        pix = py[m] * W + px[m]
        vis = d[m] >= zbuf[pix] - 1e-6 * span  # hidden behind anything in front of it
        img[pix[vis]] = color


# --------------------------------------------------------------------------- public


def render_points(clouds, width: int = 640, height: int = 480, bounds=None,
                  elev: float = 25.0, azim: float = -60.0, point_radius_px: float | None = None,
                  background=(255, 255, 255), meshes=None, ground_outline: bool = True,
                  edge_shading: float = 0.15) -> np.ndarray:
    """Render point clouds (and optional triangle meshes) to an RGB image.

    Args:
        clouds: list of ``(points, color)``: ``points (N, 3)`` float, m; ``color`` an RGB
            triple (0-255), an ``(N, 3)`` array of per-point colors (0-255), or ``None``
            (default blue). A bare ``(N, 3)`` array is accepted as one cloud.
        width, height: image size, px.
        bounds: ``(lo (3,), hi (3,))`` in m: the box the camera frames (centre of the box ->
            centre of the image) and whose bottom face (z = lo_z) is outlined. Default: the
            bounding box of all points and mesh vertices. Keep it fixed across the frames of
            an animation so the camera does not move.
        elev, azim: camera elevation above the xy plane and azimuth about z, degrees
            (matplotlib's convention). Orthographic projection.
        point_radius_px: splat radius, px. Default from the projected size of the cloud and
            the point count (1 to ~min(W, H)/80 px).
        background: RGB triple (0-255).
        meshes: optional list of ``(vertices (V, 3) m, faces (F, 3) int, color)``; color an
            RGB triple, ``(F, 3)`` per-face colors, or ``None`` (light gray). Drawn as
            flat-shaded (two-sided Lambert) triangles.
        ground_outline: draw the bottom face of ``bounds`` as a thin gray outline (hidden
            where something is in front of it).
        edge_shading: strength of the eye-dome-lighting style darkening of point pixels at
            depth steps (outlines silhouettes, helps read point clouds as 3D); 0 disables it.
            Mesh pixels are not affected (they have Lambert shading).

    Returns:
        ``(height, width, 3)`` uint8 image.

    Points are disc splats with a z-buffer; their shading darkens with depth across the
    bounds (nearer = brighter) and slightly towards the disc rim, and their depth bulges
    like a sphere so overlapping splats intersect plausibly. Meshes and points share the
    z-buffer. Non-finite points are skipped.
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if isinstance(clouds, np.ndarray):
        clouds = [(clouds, None)]
    parsed = []
    for item in clouds or []:
        if isinstance(item, np.ndarray):
            pts, color = item, None
        else:
            pts, color = item
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"cloud points must have shape (N, 3), got {pts.shape}")
        rgb = _as_color_array(color, len(pts), "cloud", _DEFAULT_POINT_COLOR)
        finite = np.isfinite(pts).all(axis=1)
        if not finite.all():
            pts = pts[finite]
            rgb = rgb if rgb.ndim == 1 else rgb[finite]
        parsed.append((pts, rgb))
    mesh_list = list(meshes or [])

    if bounds is None:
        allp = [p for p, _ in parsed if len(p)]
        allp += [np.asarray(m[0], dtype=np.float64) for m in mesh_list if len(m[0])]
        if allp:
            stack = np.concatenate([a.reshape(-1, 3) for a in allp])
            stack = stack[np.isfinite(stack).all(axis=1)]
        else:
            stack = np.zeros((0, 3))
        if len(stack):
            lo, hi = stack.min(axis=0), stack.max(axis=0)
        else:
            lo, hi = np.zeros(3), np.ones(3)
    else:
        lo, hi = (np.asarray(b, dtype=np.float64).reshape(3) for b in bounds)
        if np.any(hi < lo):
            raise ValueError(f"bounds must satisfy lo <= hi, got lo={lo}, hi={hi}")

    n_total = sum(len(p) for p, _ in parsed)
    r_max = max(2.0, min(width, height) / 80.0)
    margin = 0.05 * min(width, height)
    view = _View(lo, hi, width, height, elev, azim, margin + (r_max if n_total else 0.0))
    if point_radius_px is None and n_total:
        allp = np.concatenate([p for p, _ in parsed])
        x, y, _ = view.project(allp)
        span = max(x.max() - x.min(), y.max() - y.min(), 1.0)
        radius = float(np.clip(span / np.sqrt(n_total), 1.0, r_max))
    else:
        radius = float(point_radius_px) if point_radius_px is not None else 1.0
        radius = max(radius, 0.5)

    zbuf = np.full(width * height, -np.inf, dtype=np.float32)
    bg = np.asarray(background, dtype=np.uint8).reshape(3)
    img = np.empty((width * height, 3), dtype=np.uint8)
    img[:] = bg
    owner = np.zeros(width * height, dtype=np.uint8)
    for m in mesh_list:
        verts, faces = m[0], m[1]
        color = m[2] if len(m) > 2 else None
        _raster_mesh(view, zbuf, img, owner, verts, faces, color)
    for pts, rgb in parsed:
        if len(pts):
            _splat_points(view, zbuf, img, owner, pts, rgb, radius)
    if edge_shading > 0:
        _edge_darken(view, zbuf, img, owner == _POINT, float(edge_shading))
    if ground_outline:
        _draw_ground(view, zbuf, img, lo, hi)
    return img.reshape(height, width, 3)


def encode_png(image, compress_level: int = 6) -> bytes:
    """Encode an ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA or ``(H, W)`` gray uint8 image as PNG
    bytes (Pillow)."""
    from PIL import Image
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG image must be uint8, got {img.dtype} (scale and cast first)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"PNG image must be (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"PNG image must be non-empty, got {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path, image) -> None:
    """Write an ``(H, W, 3)`` RGB or ``(H, W)`` gray uint8 image (also ``(H, W, 4)`` RGBA) as PNG,
    atomically; parent directories are created."""
    atomic_write_bytes(path, encode_png(image))


def _to_rgb_u8(img, what="image"):
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must be (H, W) or (H, W, 3), got {a.shape}")
    return a


def write_animation(path, frames: Sequence[np.ndarray], fps: float = 20) -> bool:
    """Write frames as an animated GIF (or MP4 for a ``.mp4`` path) through imageio.

    Args:
        path: destination; ``.gif`` (needs imageio + Pillow) or ``.mp4`` (needs imageio +
            imageio-ffmpeg or PyAV; frames are edge-padded to multiples of 16 px). Written
            atomically.
        frames: list of ``(H, W, 3)`` (or ``(H, W)``) uint8 images, all the same size.
        fps: frames per second.

    Returns:
        ``True`` if the file was written; ``False`` (no exception) when imageio is not
        installed. When imageio is there but its backend for the format is missing or fails,
        a ``RuntimeWarning`` is issued and ``False`` returned. Write PNG frames with
        :func:`write_png` as the always-available fallback.
    """
    try:
        import imageio  # noqa: F401
    except ImportError:
        return False
    frames = [_to_rgb_u8(f, "frame") for f in frames]
    if not frames:
        raise ValueError("write_animation needs at least one frame")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise ValueError(f"all frames must have the same shape, got {sorted({f.shape for f in frames})}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    stack = np.stack(frames)
    ext = os.path.splitext(os.fspath(path))[1].lower() or ".gif"
    if ext != ".gif":
        # Video codecs want sizes divisible by 16 (imageio-ffmpeg would rescale and warn):
        # pad the bottom/right edges by replication instead.
        ph, pw = -stack.shape[1] % 16, -stack.shape[2] % 16
        if ph or pw:
            stack = np.pad(stack, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    try:
        with _atomic_path(path, suffix=ext) as tmp, warnings.catch_warnings():
            # imageio warns about unrelated deprecated plugins while it searches for one.
            warnings.simplefilter("ignore")
            _imageio_write(tmp, stack, ext, fps)
    except Exception as exc:  # backend missing (no Pillow/ffmpeg) or failing
        warnings.warn(f"write_animation: imageio could not write {os.fspath(path)!r} "
                      f"({type(exc).__name__}: {exc}); no animation written",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def _imageio_write(tmp, stack, ext, fps):
    try:
        import imageio.v3 as iio
    except ImportError:  # imageio < 2.16: v2 API only
        iio = None
    if iio is not None:
        if ext == ".gif":
            # Pillow plugin: duration per frame in ms; loop=0 repeats forever.
            iio.imwrite(tmp, stack, extension=ext, duration=1000.0 / fps, loop=0)
        else:
            try:
                iio.imwrite(tmp, stack, extension=ext, fps=fps)
            except Exception:
                # No PyAV: the legacy ffmpeg plugin (imageio-ffmpeg).
                iio.imwrite(tmp, stack, extension=ext, plugin="FFMPEG", fps=fps)
        return
    import imageio
    if ext == ".gif":
        imageio.mimsave(tmp, list(stack), format="GIF", duration=1.0 / fps, loop=0)
    else:
        imageio.mimsave(tmp, list(stack), fps=fps)


def hstack_images(images: Sequence[np.ndarray], pad: int = 4, background=255) -> np.ndarray:
    """Place images side by side (top-aligned) with ``pad`` px gaps.

    Args:
        images: ``(H_i, W_i, 3)`` or ``(H_i, W_i)`` uint8 images (gray becomes RGB).
        pad: gap between images, px.
        background: fill for gaps and below shorter images: a gray level or an RGB triple.

    Returns:
        ``(max H_i, sum W_i + pad * (n - 1), 3)`` uint8.
    """
    imgs = [_to_rgb_u8(im) for im in images]
    if not imgs:
        raise ValueError("hstack_images needs at least one image")
    pad = int(pad)
    h = max(im.shape[0] for im in imgs)
    w = sum(im.shape[1] for im in imgs) + pad * (len(imgs) - 1)
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.broadcast_to(np.asarray(background, dtype=np.uint8), (3,))
    x = 0
    for im in imgs:
        out[:im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + pad
    return out
