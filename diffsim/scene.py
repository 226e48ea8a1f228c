"""Scenes: what a scene script's ``build(**options)`` returns.

A scene script is a Python file with a module docstring (shown by ``diffsim scenes``) and

    def build(**options) -> diffsim.Scene

``diffsim run SCENE.py --set key=value`` passes options through (values parsed as Python
literals when possible).
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import numpy as np

from .errors import InvalidScene

# body colours for previews (RGB 0-255)
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class Scene:
    """A simulation ready to run: a solver plus what the runner needs to present it.

    Args:
        solver: an :class:`~diffsim.MPMSolver` or :class:`~diffsim.DEMSolver`, set up.
        name: scene name (defaults to the script's file name).
        description: one paragraph for ``diffsim scenes`` and the summary.
        steps: default number of substeps for ``diffsim run``.
        every: default substeps between written frames.
        camera: ``(elev, azim)`` in degrees for previews.
        view_bounds: ``(lo, hi)`` region shown in previews (default: the domain).
        options: the build options, recorded in the summary.
        measures: objects with ``columns`` (names), ``trace(solver) -> dict`` (those columns,
            added to every trace row) and ``figures(traces) -> dict`` (the run's derived
            figures, ``summary.json`` ``outputs``), e.g. :class:`diffsim.dem.HopperDischarge`.
    """

    def __init__(self, solver, name: str = "scene", description: str = "", steps: int = 1000,
                 every: int = 50, camera=(20.0, -60.0), view_bounds=None, options: dict | None = None,
                 measures=()):
        if int(steps) < 1 or int(every) < 1:
            raise InvalidScene("steps and every must be >= 1")
        self.solver = solver
        self.name = name
        self.description = description
        self.steps = int(steps)
        self.every = int(every)
        self.camera = tuple(camera)
        self.view_bounds = view_bounds
        self.options = dict(options or {})
        self.measures = tuple(measures)
        for m in self.measures:
            if not all(hasattr(m, a) for a in ("columns", "trace", "figures")):
                raise InvalidScene(f"measure {m!r} needs columns, trace(solver) and figures(traces)")

    # the runner's interface -------------------------------------------------------------
    @property
    def dt(self) -> float:
        return self.solver.dt

    @property
    def particle_count(self) -> int:
        return self.solver.n

    @property
    def time(self) -> float:
        return self.solver.time

    @property
    def step_count(self) -> int:
        return self.solver.step_count

    def build(self):
        self.solver.build()
        return self

    def step(self, n: int = 1):
        self.solver.step(n)

    def diagnostics(self) -> dict:
        d = self.solver.diagnostics()
        for m in self.measures:
            d.update(m.trace(self.solver))
        return d

    @property
    def trace_columns(self) -> tuple:
        """The measures' trace columns (kept in ``summary.json`` traces)."""
        return tuple(c for m in self.measures for c in m.columns)

    def outputs(self, traces: dict) -> dict:
        """The measures' figures of a run from its traces (``{name: [value per frame]}``);
        {} without measures or with fewer than two frames."""
        if not self.measures or len(traces.get("time", ())) < 2:
            return {}
        out = {}
        for m in self.measures:
            out.update(m.figures(traces))
        return out

    def checkpoint(self):
        return self.solver.checkpoint()

    def restore(self, arrays, meta):
        self.solver.restore(arrays, meta)

    def frame(self) -> dict:
        """``{"particles": (x (N,3), point_data), "meshes": {name: (verts, faces)}}``."""
        return self.solver.frame()

    def render(self, frame: dict, width=480, height=360):
        """Preview image (H,W,3 uint8) of a frame."""
        from .render import render_points
        s = self.solver
        x, data = frame["particles"]
        colors = np.asarray(PALETTE, dtype=np.uint8)[data["body"] % len(PALETTE)]
        lo, hi = self.view_bounds if self.view_bounds is not None else (s.lo, s.hi)
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        meshes = []
        for name, (v, f) in frame["meshes"].items():
            # clip huge planes to the view for drawing
            vv = np.clip(v, lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            meshes.append((vv, f, (170, 170, 170)))
        return render_points([(x, colors)], width=width, height=height, bounds=(lo, hi),
                             elev=self.camera[0], azim=self.camera[1], meshes=meshes or None)

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "options": self.options,
                "solver": self.solver.describe()}


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(pairs) -> dict:
    """``["a=1", "b=(0,0,1)", "c=sand"]`` -> ``{"a": 1, "b": (0, 0, 1), "c": "sand"}``."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise InvalidScene(f"options must look like key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def resolve_script(path) -> Path:
    """The scene script file for ``path``: the file itself, or a built-in scene of that
    name (with or without ``.py``). Raises :class:`InvalidScene` if there is none."""
    path = Path(path)
    if not path.exists():
        builtin = Path(scenes_dir()) / path.name
        if builtin.exists():
            path = builtin
        elif (Path(scenes_dir()) / f"{path.name}.py").exists():
            path = Path(scenes_dir()) / f"{path.name}.py"
        else:
            raise InvalidScene(f"scene script {str(path)!r} not found (built-in scenes: "
                               f"{', '.join(n for n, _ in list_scenes())})")
    return path


def load_script(path):
    """Import a scene script from a file path; returns the module."""
    path = resolve_script(path)
    name = f"diffsim_scene_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "build"):
        raise InvalidScene(f"{path} defines no build(**options) function")
    module.__diffsim_path__ = str(path)
    return module


def build_scene(path, options: dict | None = None) -> Scene:
    """Load a scene script and call its ``build(**options)``."""
    module = load_script(path)
    options = dict(options or {})
    sig = inspect.signature(module.build)
    accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in options if k not in sig.parameters and not accepts_kwargs]
    if unknown:
        raise InvalidScene(f"scene {Path(module.__diffsim_path__).name} has no option(s) {unknown}; "
                           f"available: {[p for p in sig.parameters]}")
    options = check_option_types(sig, options, Path(module.__diffsim_path__).name)
    scene = module.build(**options)
    if not isinstance(scene, Scene):
        raise InvalidScene(f"{module.__diffsim_path__}: build() must return a diffsim.Scene, got "
                           f"{type(scene).__name__}")
    if scene.name == "scene":
        scene.name = Path(module.__diffsim_path__).stem
    if not scene.description:
        scene.description = (module.__doc__ or "").strip()
    scene.options = {**scene.options, **options}
    return scene


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (tuple, list)):
        return "sequence"
    if isinstance(value, str):
        return "str"
    return "other"


_KIND_WORDS = {"bool": "True or False", "int": "an integer", "float": "a number", "sequence": "a tuple like (1, 2, 3)",
               "str": "a word"}


def check_option_types(sig, options: dict, script: str) -> dict:
    """Options checked against the type of each parameter's default (ints stay ints: 32.5
    is no grid size; ints are accepted where floats are expected; a sequence keeps its
    length); parameters without a default or with a None default take anything."""
    out = dict(options)
    for k, v in options.items():
        p = sig.parameters.get(k)
        if p is None or p.default is inspect.Parameter.empty or p.default is None:
            continue
        want, got = _kind(p.default), _kind(v)
        if want == "other" or want == got:
            if want == "sequence" and len(v) != len(p.default):
                raise InvalidScene(f"scene {script}: option {k} expects {len(p.default)} values like "
                                   f"{tuple(p.default)}, got {v!r}")
            continue
        if want == "float" and got == "int":
            out[k] = float(v)
            continue
        if want == "int" and got == "float" and float(v).is_integer():   # 3e3 for a count
            out[k] = int(v)
            continue
        raise InvalidScene(f"scene {script}: option {k} expects {_KIND_WORDS.get(want, want)} (default "
                           f"{p.default!r}), got {v!r}")
    return out


def scenes_dir() -> str:
    """The folder of the built-in scene scripts (``scenes/`` next to the package)."""
    env = os.environ.get("DIFFSIM_SCENES")
    if env:
        return env
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "scenes", here / "scenes"):
        if cand.is_dir():
            return str(cand)
    return str(here.parent / "scenes")


def list_scenes():
    """``[(name, first docstring line), ...]`` of the built-in scenes."""
    out = []
    d = Path(scenes_dir())
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.py")):
        if p.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
        except SyntaxError:
            doc = "(syntax error)"
        out.append((p.stem, doc))
    return out
