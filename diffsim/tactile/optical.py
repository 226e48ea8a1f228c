"""Optical tactile image: the RGB picture a GelSight-style camera takes of the sensor's
deformed contact surface, differentiable end to end (PyTorch).

    optics = OpticalTactile(sensor)                      # the sensor's camera, 640 x 480
    image = optics(x, translation, rotation)             # (3, H, W) in [0, 1] (not clipped)
    loss = ((image - observed) ** 2).mean(); loss.backward()   # reaches x, hence E, friction...

How a frame is made:

1. **Geometry** at a coarse pixel grid (every ``stride``-th pixel centre): each grid pixel's
   camera ray is cast once, at rest, onto the contact surface and bound to a triangle by
   barycentric coordinates (like the markers). Per frame, the deformed surface gives each
   grid pixel its surface normal (area-weighted vertex normals of the deformed triangles,
   interpolated) and its indentation depth, in the sensor's rest frame.
2. **Up-sampling** of normal, depth and coverage to the full image (bilinear): the surface
   mesh is much coarser than the image, so the geometry is smooth at the pixel scale.
3. **Shading**, per full-resolution pixel: the camera sees the membrane from behind, lit
   by coloured lights on its side (GelSight's three grazing RGB lights by default):
   ``rgb = ambient + sum_l colour_l * (max(0, m . L_l) + specular * max(0, m . H_l)^shininess)``
   with ``m`` the membrane's inner normal and ``H_l`` the half vector between the light and
   the camera's view direction (Lambert + Blinn-Phong).
4. **A learnable per-pixel module**: a small MLP on (normal, depth, pixel position) adds
   a colour correction (zero at construction), so that the image can be calibrated
   against a real sensor's pictures (:meth:`OpticalTactile.calibrate`); the lights'
   directions and colours, the ambient term, the specular weight and the background
   colour are learnable too.
5. **Markers**: dark Gaussian dots at the markers' projected pixels (the sensor's
   markers, moving with the surface), multiplied into the image.

Every step is torch on the coarse-grid geometry, so gradients of a pixel loss reach the
node positions and, through :func:`diffsim.rollout`, the sensor's and the object's
parameters.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidScene

# GelSight-like default: red, green and blue lights 120 degrees apart, 30 degrees above the
# membrane (on the camera's side), plus a little ambient light.
DEFAULT_LIGHTS = ((0.0, 30.0, (0.75, 0.12, 0.12)),      # (azimuth deg, elevation deg, rgb)
                  (120.0, 30.0, (0.12, 0.70, 0.12)),
                  (240.0, 30.0, (0.12, 0.12, 0.80)))


def light_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector from the membrane towards a light in the sensor frame (t1, t2, normal):
    ``azimuth`` about the normal from t1, ``elevation`` above the membrane on the camera's
    side (the lights sit behind the membrane, with the camera, so the normal component is
    negative)."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), -math.sin(e)])


class OpticalTactile(torch.nn.Module):
    """Differentiable GelSight-style RGB image of a :class:`~diffsim.TactileSensor`.

    Args:
        sensor: the sensor (its camera, contact surface and markers are used).
        stride: geometry is computed every ``stride`` pixels and up-sampled (the camera's
            width and height must be multiples of it).
        lights: ``[(azimuth_deg, elevation_deg, (r, g, b)), ...]`` in the sensor frame;
            default :data:`DEFAULT_LIGHTS`.
        ambient: ambient rgb (added everywhere on the membrane).
        specular, shininess: Blinn-Phong weight (relative to each light's colour) and
            exponent.
        hidden: width of the per-pixel MLP (0: no MLP).
        depth_scale: indentation depth (m) that the MLP sees as 1.
        marker_sigma_px, marker_darkness: markers' Gaussian radius (px) and how much light
            they take at their centre (0..1); ``marker_darkness=0`` draws none.
        background: rgb outside the membrane (pixels whose ray misses the contact surface).
    """

    def __init__(self, sensor, stride: int = 4, lights=None, ambient=(0.08, 0.08, 0.08),
                 specular: float = 0.25, shininess: float = 16.0, hidden: int = 8,
                 depth_scale: float = 1e-3, marker_sigma_px: float = 2.5, marker_darkness: float = 0.85,
                 background=(0.02, 0.02, 0.02)):
        super().__init__()
        cam = sensor.camera
        self.sensor = sensor
        self.width, self.height = int(cam.width), int(cam.height)
        stride = int(stride)
        if stride < 1 or self.width % stride or self.height % stride:
            raise InvalidScene(f"OpticalTactile: stride must be >= 1 and divide the image size "
                               f"{self.width} x {self.height}, got {stride}")
        for name, v in (("shininess", shininess), ("depth_scale", depth_scale), ("marker_sigma_px", marker_sigma_px)):
            if not (math.isfinite(float(v)) and float(v) > 0):
                raise InvalidScene(f"OpticalTactile: {name} must be positive, got {v}")
        if not 0.0 <= float(marker_darkness) <= 1.0:
            raise InvalidScene(f"OpticalTactile: marker_darkness must be in [0, 1], got {marker_darkness}")
        self.stride, self.shininess, self.depth_scale = stride, float(shininess), float(depth_scale)
        self.marker_sigma, self.marker_darkness = float(marker_sigma_px), float(marker_darkness)
        lights = DEFAULT_LIGHTS if lights is None else lights
        if len(lights) < 1:
            raise InvalidScene("OpticalTactile: at least one light is needed")
        f64 = torch.float64
        self.light_dir = torch.nn.Parameter(torch.tensor(np.stack([light_direction(a, e) for a, e, _ in lights]), dtype=f64))
        self.light_rgb = torch.nn.Parameter(torch.tensor([list(c) for _, _, c in lights], dtype=f64))
        self.ambient = torch.nn.Parameter(torch.tensor(list(ambient), dtype=f64))
        self.specular = torch.nn.Parameter(torch.tensor(float(specular), dtype=f64))
        self.background = torch.nn.Parameter(torch.tensor(list(background), dtype=f64))
        # per-pixel MLP 6 -> hidden -> 3 as two matrix products over all pixels (kept in float64
        # and cast per call, so one module renders float32 and float64 frames alike)
        self.hidden = int(hidden)
        if self.hidden > 0:
            gen = torch.Generator().manual_seed(0)
            self.w1 = torch.nn.Parameter(torch.randn(self.hidden, 6, generator=gen, dtype=f64) / math.sqrt(6))
            self.b1 = torch.nn.Parameter(torch.zeros(self.hidden, 1, dtype=f64))
            self.w2 = torch.nn.Parameter(torch.zeros(3, self.hidden, dtype=f64))    # no correction until calibrated
            self.b2 = torch.nn.Parameter(torch.zeros(3, 1, dtype=f64))
        self._bind_pixels()
        # pixel position in [-1, 1] (the MLP's last two inputs), full resolution
        u = (torch.arange(self.width, dtype=f64) + 0.5) / self.width * 2 - 1
        v = (torch.arange(self.height, dtype=f64) + 0.5) / self.height * 2 - 1
        self.register_buffer("pixel_uv", torch.stack(torch.meshgrid(u, v, indexing="xy")).unsqueeze(0), persistent=False)
        r = int(math.ceil(3 * self.marker_sigma))
        self.register_buffer("_patch", torch.arange(-r, r + 1), persistent=False)
        self._consts = {}

    def _const(self, like: torch.Tensor) -> dict:
        """The constant tensors on ``like``'s device, the real ones in its dtype (cast once:
        casting the full-resolution pixel grid per frame costs as much as the shading)."""
        key = (like.dtype, like.device)
        if key not in self._consts:
            c = {k: getattr(self, k).to(device=like.device, dtype=like.dtype) for k in
                 ("pixel_uv", "_bary", "_hit", "_frame", "_X")}
            c.update({k: getattr(self, k).to(like.device) for k in ("_tri", "_faces", "_patch")})
            self._consts[key] = c
        return self._consts[key]

    # ------------------------------------------------------------------ set-up
    def _bind_pixels(self):
        """Cast the coarse grid's pixel rays onto the contact surface at rest."""
        s, cam = self.stride, self.sensor.camera
        h, w = self.height // s, self.width // s
        u = s * np.arange(w) + (s - 1) / 2.0                 # coarse pixel j's centre (bilinear up-sampling
        v = s * np.arange(h) + (s - 1) / 2.0                 # by s maps it back onto these pixels)
        U, V = np.meshgrid(u, v)
        px = np.stack([U.ravel(), V.ravel()], 1)
        origins = np.broadcast_to(cam.position, (len(px), 3))
        face, bary = self.sensor._cast(origins, cam.rays(px))
        hit = face >= 0
        if not hit.any():
            raise InvalidScene("OpticalTactile: no pixel ray reaches the contact surface (check the camera)")
        self.coarse_shape = (h, w)
        tri = np.where(hit[:, None], self.sensor.faces[np.maximum(face, 0)], 0)
        self.register_buffer("_tri", torch.as_tensor(tri, dtype=torch.long), persistent=False)
        self.register_buffer("_bary", torch.as_tensor(np.where(hit[:, None], np.nan_to_num(bary), 0.0)), persistent=False)
        self.register_buffer("_hit", torch.as_tensor(hit.astype(np.float64)), persistent=False)
        self.register_buffer("_faces", torch.as_tensor(self.sensor.faces, dtype=torch.long), persistent=False)
        self.register_buffer("_frame", torch.as_tensor(self.sensor.frame), persistent=False)
        self.register_buffer("_X", torch.as_tensor(self.sensor.X), persistent=False)
        self.coverage = float(hit.mean())

    # ------------------------------------------------------------------ per frame
    def geometry(self, x, translation=None, rotation=None) -> dict:
        """Coarse-grid geometry of the deformed surface from the pad's node positions ``x``
        (all solver nodes or the body's, world, m; torch) and the driver's pose (as for
        :meth:`TactileSensor.read`): ``normal`` (3, h, w) outward unit normals in the
        sensor frame (t1, t2, n), ``depth`` (1, h, w) indentation (m), ``mask`` (1, h, w),
        ``markers_px`` (M, 2)."""
        sensor = self.sensor
        if not torch.is_tensor(x):
            x = torch.as_tensor(np.asarray(x, np.float64))
        if x.shape[0] != len(sensor.X):
            x = x[sensor.body.start:sensor.body.stop]
        xs = sensor.to_sensor_frame(x, translation, rotation)
        c = self._const(xs)
        tri = xs[c["_faces"]]                                              # (F, 3, 3)
        fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])   # area-weighted
        vn = torch.zeros_like(xs).index_add_(0, c["_faces"].reshape(-1), fn.repeat_interleave(3, 0))
        bary, hit = c["_bary"], c["_hit"]
        n = (vn[c["_tri"]] * bary[:, :, None]).sum(1) @ c["_frame"]       # world -> (t1, t2, n)
        n = n + (1.0 - hit)[:, None] * xs.new_tensor([0.0, 0.0, 1.0])   # misses: flat
        n = n / torch.linalg.vector_norm(n, dim=1, keepdim=True)
        depth_node = (c["_X"] - xs) @ c["_frame"][:, 2]
        depth = (depth_node[c["_tri"]] * bary).sum(1) * hit
        h, w = self.coarse_shape
        markers = sensor.camera.project(sensor._marker_points(xs))
        return {"normal": n.T.reshape(3, h, w), "depth": depth.reshape(1, h, w),
                "mask": hit.reshape(1, h, w), "markers_px": markers}

    def shade(self, geometry: dict) -> torch.Tensor:
        """Full-resolution image (3, H, W) from :meth:`geometry`."""
        g = torch.cat([geometry["normal"], geometry["depth"] / self.depth_scale, geometry["mask"]]).unsqueeze(0)
        if self.stride > 1:
            g = F.interpolate(g, scale_factor=self.stride, mode="bilinear", align_corners=False)
        H, W = self.height, self.width
        g = g[0].reshape(5, H * W)
        # unit normals (a norm over dim 0 of a (3, HW) tensor is a slow strided reduction)
        n = g[:3] * (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).rsqrt()
        L = self.light_dir.to(g)
        L = L / torch.linalg.vector_norm(L, dim=1, keepdim=True)
        view = g.new_tensor([0.0, 0.0, -1.0])                             # towards the camera
        half = L + view
        half = half / torch.linalg.vector_norm(half, dim=1, keepdim=True)
        # the camera sees the membrane from behind: its inner normal is -n
        diffuse = torch.relu(-L @ n)                                     # (K, HW)
        spec = torch.relu(-half @ n).pow(self.shininess)
        rgb = torch.addmm(self.ambient.to(g)[:, None], self.light_rgb.to(g).T,
                          diffuse + self.specular.to(g) * spec)
        if self.hidden > 0:
            feats = torch.cat([n, g[3:4], self._const(g)["pixel_uv"].reshape(2, H * W)])
            hid = F.silu(torch.addmm(self.b1.to(g), self.w1.to(g), feats))
            rgb = torch.addmm(rgb, self.w2.to(g), hid) + self.b2.to(g)
        bg = self.background.to(g).reshape(3, 1)
        img = (bg + g[4:5] * (rgb - bg)).reshape(3, H, W)
        return self._draw_markers(img, geometry["markers_px"])

    def _draw_markers(self, img, px):
        """Multiply dark Gaussian dots (local patches, so cost ~ markers, not pixels)."""
        if self.marker_darkness == 0 or len(px) == 0:
            return img
        _, H, W = img.shape
        c = px.to(img.dtype)
        base = torch.round(c.detach()).long()
        patch = self._const(img)["_patch"]
        U = base[:, 0, None, None] + patch[None, None, :]
        V = base[:, 1, None, None] + patch[None, :, None]
        d2 = (U - c[:, 0, None, None]) ** 2 + (V - c[:, 1, None, None]) ** 2
        g = torch.exp(-0.5 * d2 / self.marker_sigma ** 2)
        ok = (U >= 0) & (U < W) & (V >= 0) & (V < H)
        cover = img.new_zeros(H * W).index_add_(0, (V * W + U)[ok], g[ok])
        return img * (1.0 - self.marker_darkness * cover.clamp(max=1.0)).reshape(1, H, W)

    def forward(self, x, translation=None, rotation=None) -> torch.Tensor:
        """The image (3, H, W), values about 0..1 (not clipped: see :func:`to_uint8`)."""
        return self.shade(self.geometry(x, translation, rotation))

    # ------------------------------------------------------------------ calibration
    def calibrate(self, geometries, images, iterations: int = 300, lr: float = 0.01, progress: bool = False) -> list:
        """Fit the lights, ambient, specular weight and MLP to reference images.

        ``geometries``: :meth:`geometry` outputs (detached) of the frames; ``images``:
        matching (3, H, W) tensors or (H, W, 3) uint8 arrays. Adam on the mean squared
        pixel error; returns the loss per iteration (the module is left at the end point).
        """
        if len(geometries) != len(images) or len(images) == 0:
            raise InvalidScene(f"calibrate: {len(geometries)} geometries for {len(images)} images")
        targets = [self._as_image(im) for im in images]
        geos = [{k: v.detach() for k, v in g.items()} for g in geometries]
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        from ..progress import Progress
        losses = []
        with Progress(total=int(iterations), desc="calibrate", unit="iter", disable=not progress) as bar:
            for _ in range(int(iterations)):
                opt.zero_grad()
                loss = sum(((self.shade(g) - t) ** 2).mean() for g, t in zip(geos, targets)) / len(geos)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update(1, loss=losses[-1])
        return losses

    def _as_image(self, im) -> torch.Tensor:
        if torch.is_tensor(im):
            t = im.detach().double()
        else:
            a = np.asarray(im)
            t = torch.as_tensor(a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0))
            if t.ndim == 3 and t.shape[-1] == 3:
                t = t.permute(2, 0, 1)
        if tuple(t.shape) != (3, self.height, self.width):
            raise InvalidScene(f"calibrate: images must be (3, {self.height}, {self.width}) tensors or "
                               f"({self.height}, {self.width}, 3) arrays, got {tuple(t.shape)}")
        return t


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) image in 0..1 -> (H, W, 3) uint8 (clipped) for saving or display."""
    a = image.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(a * 255).astype(np.uint8)
