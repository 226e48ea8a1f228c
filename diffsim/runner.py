"""Run a scene to disk: frames, preview, summary and resumable checkpoints.

Output folder layout::

    OUT/frames/particles_000000.ply   particle cloud per frame (body id, velocity, J)
    OUT/frames/colliders_000000.vtu   collider surfaces per frame (when there are colliders)
    OUT/frames/NAME_000000.png        images per frame (a tactile sensor's marker flow)
    OUT/preview.png                   four snapshots side by side
    OUT/animation.gif                 all frames (only when imageio is installed)
    OUT/summary.json                  run summary with energy and momentum traces
    OUT/checkpoint.npz                state after the last written frame (for --resume)

Every file is written atomically, so an interrupted run leaves only complete files and
``--resume`` continues from the last checkpoint.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import io as dio
from .errors import InvalidScene, RunInterrupted, SimulationDiverged
from .progress import Progress
from .render import write_png

FORMAT = 1


_OPTIONAL_TRACES = ("particles_active", "discharged_mass",   # DEM: spheres left, mass discharged (kg)
                    "max_penetration", "contact_force")       # FEM: deepest penetration (m), total force (N)


def _is_sensor_trace(key: str) -> bool:
    return key.endswith(("_normal_force", "_shear_force", "_max_marker_px"))


def _trace_row(d: dict, columns=()) -> dict:
    row = {"time": float(d["time"]), "step": int(d["step"]), "kinetic": float(d["kinetic"]),
           "potential": float(d["potential"]), "elastic": float(d["elastic"]), "energy": float(d["energy"]),
           "momentum": [float(m) for m in d["momentum"]], "max_speed": float(d["max_speed"])}
    row.update({k: d[k] for k in d if k in _OPTIONAL_TRACES or k in columns or _is_sensor_trace(k)})
    return row


def trace_table(rows: list) -> dict:
    """Trace rows (one dict per frame) as ``{name: [value per frame]}``."""
    return {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}


def _write_frame(scene, frames_dir: Path, index: int) -> list[str]:
    frame = scene.frame()
    x, data = frame["particles"]
    names = []
    name = dio.frame_name("particles", index, "ply")
    dio.write_ply(frames_dir / name, x, data)
    names.append(name)
    if frame["meshes"]:
        verts, faces, owner = [], [], []
        off = 0
        for i, (v, f) in enumerate(frame["meshes"].values()):
            verts.append(v)
            faces.append(np.asarray(f) + off)
            owner.append(np.full(len(f), i, np.int32))
            off += len(v)
        name = dio.frame_name("colliders", index, "vtu")
        dio.write_vtu(frames_dir / name, np.concatenate(verts), {"triangle": np.concatenate(faces)},
                      cell_data={"collider": np.concatenate(owner)})
        names.append(name)
    for key, image in frame.get("images", {}).items():   # e.g. a tactile sensor's marker flow
        name = dio.frame_name(key, index, "png")
        write_png(frames_dir / name, image)
        names.append(name)
    return names


def run_scene(scene, out_dir, steps: int | None = None, every: int | None = None, resume: bool = False,
              progress: bool = True, video: bool = True, overwrite: bool = False,
              resume_command: str | None = None) -> dict:
    """Step ``scene`` for ``steps`` substeps, writing a frame every ``every`` substeps.

    Returns the summary dict (also written to ``OUT/summary.json``). Raises
    :class:`SimulationDiverged` after writing a summary with ``status = "diverged"``;
    frames written so far are kept. An ``out_dir`` that holds an earlier run is refused
    (its results stay intact) unless ``resume`` (continue it) or ``overwrite`` (replace it).
    An interrupted run's summary says ``interrupted``, its checkpointed step and
    ``resume_command`` (the command line that continues it, when given).
    """
    out = Path(out_dir)
    if not resume and not overwrite:
        refuse_existing_run(out)
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    steps = int(steps if steps is not None else scene.steps)
    every = int(every if every is not None else scene.every)
    if steps < 1 or every < 1:
        raise InvalidScene(f"steps and every must be >= 1, got {steps}, {every}")
    scene.build()
    ckpt_path = out / "checkpoint.npz"
    traces: list[dict] = []
    frames: list[str] = []
    stepping_time = 0.0
    resumed_from = None
    if resume:
        if not ckpt_path.exists():
            raise InvalidScene(f"--resume: no checkpoint in {out} (nothing to resume); run without --resume")
        arrays, meta = dio.load_checkpoint(ckpt_path)
        run = meta.get("run", {})
        if run.get("scene") != scene.name or int(run.get("particles", -1)) != scene.particle_count:
            raise InvalidScene(f"--resume: the checkpoint in {out} belongs to scene {run.get('scene')!r} with "
                               f"{run.get('particles')} particles, not {scene.name!r} with {scene.particle_count}")
        if int(run.get("every", every)) != every:
            raise InvalidScene(f"--resume: the interrupted run wrote a frame every {run.get('every')} steps; "
                               f"resume with --every {run.get('every')}")
        scene.restore(arrays, meta)
        traces = list(run.get("traces", []))
        frames = list(run.get("frames", []))
        stepping_time = float(run.get("stepping_time", 0.0))
        resumed_from = scene.step_count
        if scene.step_count >= steps:
            steps = scene.step_count
    else:
        for old in (list(frames_dir.glob("particles_*.ply")) + list(frames_dir.glob("colliders_*.vtu"))
                    + list(frames_dir.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].png"))):
            old.unlink()
        if ckpt_path.exists():
            ckpt_path.unlink()
        traces.append(_trace_row(scene.diagnostics(), scene.trace_columns))
        frames += _write_frame(scene, frames_dir, 0)

    status, error = "running", None
    wall0 = time.perf_counter()
    checkpoint_step = resumed_from
    dio.atomic_write_json(out / "summary.json", _summary(scene, steps, every, traces, frames, stepping_time, 0.0,
                                                         status, error, resumed_from, checkpoint_step))
    try:
        with Progress(total=steps, desc=scene.name, unit="step", disable=not progress) as bar:
            bar.update(scene.step_count)
            while scene.step_count < steps:
                n = min(every - scene.step_count % every, steps - scene.step_count)
                t0 = time.perf_counter()
                scene.step(n)
                stepping_time += time.perf_counter() - t0
                bar.update(n)
                if scene.step_count % every == 0 or scene.step_count == steps:
                    d = scene.diagnostics()
                    traces.append(_trace_row(d, scene.trace_columns))
                    frames += _write_frame(scene, frames_dir, scene.step_count // every
                                           + (1 if scene.step_count % every else 0))
                    arrays, meta = scene.checkpoint()
                    meta["run"] = {"format": FORMAT, "scene": scene.name, "particles": scene.particle_count,
                                   "every": every, "steps": steps, "options": _jsonable(scene.options),
                                   "traces": traces, "frames": frames, "stepping_time": stepping_time}
                    dio.save_checkpoint(ckpt_path, arrays, meta)
                    checkpoint_step = scene.step_count
                    bar.update(0, E=f"{d['energy']:.4g}J")
        status = "completed"
    except SimulationDiverged as exc:
        status, error = "diverged", str(exc)
        raise
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the command line
        exc = RunInterrupted(scene.step_count, checkpoint_step, str(out))
        status, error = "interrupted", str(exc)
        raise exc from None
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = _summary(scene, steps, every, traces, frames, stepping_time, time.perf_counter() - wall0,
                           status, error, resumed_from, checkpoint_step)
        if status == "completed":
            _previews(scene, out, frames_dir, frames, video)
            summary["preview"] = "preview.png"
        if status == "interrupted":
            summary["resume_command"] = resume_command
        dio.atomic_write_json(out / "summary.json", summary)
    return summary


def refuse_existing_run(out) -> None:
    """Raise :class:`InvalidScene` if ``out`` holds an earlier run (see :func:`run_scene`)."""
    out = Path(out)
    if holds_run(out):
        raise InvalidScene(f"{out} already holds a run ({_describe_run(out)}); pass --overwrite to replace it, "
                           f"--resume to continue it, or choose another --out")


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds the outputs of an earlier run (a summary, a checkpoint or frames)."""
    out = Path(out)
    if (out / "summary.json").exists() or (out / "checkpoint.npz").exists():
        return True
    frames = out / "frames"
    return frames.is_dir() and any(frames.iterdir())


def _describe_run(out: Path) -> str:
    import json
    try:
        s = json.loads((out / "summary.json").read_text())
        return f"scene {s.get('scene')!r}, status {s.get('status')!r}, {s.get('steps')} steps"
    except (OSError, ValueError):
        return "frames or a checkpoint"


def _jsonable(options: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def saved_run(out) -> dict | None:
    """The run record (scene, options, every, steps, ...) of ``OUT/checkpoint.npz``, or
    None without a checkpoint."""
    path = Path(out) / "checkpoint.npz"
    if not path.exists():
        return None
    _, meta = dio.load_checkpoint(path)
    return meta.get("run")


def resume_settings(out, options: dict, every: int | None):
    """Scene options and frame interval for ``--resume``: the checkpoint's, with the given
    ones allowed only where they agree (a different value is refused, naming it)."""
    run = saved_run(out)
    if run is None:
        return options, every
    saved = dict(run.get("options") or {})
    for k, v in options.items():
        if k in saved and not _same(saved[k], v):
            raise InvalidScene(f"--resume: the run in {out} was started with {k}={saved[k]!r}, not {v!r}; drop "
                               f"--set {k}=... to continue it, or start a new run (--overwrite)")
        if k not in saved:
            raise InvalidScene(f"--resume: the run in {out} was started without option {k}; drop --set {k}=... "
                               f"to continue it, or start a new run (--overwrite)")
    saved_every = run.get("every")
    if every is not None and saved_every is not None and int(every) != int(saved_every):
        raise InvalidScene(f"--resume: the run in {out} wrote a frame every {saved_every} steps, not {every}; "
                           f"drop --every to continue it")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    return tuples, (int(saved_every) if saved_every is not None else every)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _summary(scene, steps, every, traces, frames, stepping_time, wall, status, error, resumed_from,
             checkpoint_step=None):
    n = scene.particle_count
    done = scene.step_count
    table = trace_table(traces)
    return {
        "scene": scene.name, "description": scene.description, "options": scene.options,
        "status": status, "error": error, "steps": done, "steps_requested": steps, "every": every,
        "dt": scene.dt, "simulated_time": scene.time, "particles": n,
        "wall_time_s": wall, "stepping_time_s": stepping_time,
        "particle_steps_per_s": (n * done / stepping_time) if stepping_time > 0 else None,
        "steps_per_s": (done / stepping_time) if stepping_time > 0 else None,
        "resumed_from_step": resumed_from,
        "checkpoint_step": checkpoint_step,
        "pid": os.getpid(),
        "frames": frames,
        "traces": table,
        "outputs": scene.outputs(table),
        "scene_setup": scene.describe(),
    }


def _previews(scene, out: Path, frames_dir: Path, frames: list[str], video: bool):
    """preview.png (4 snapshots) and, with imageio, animation.gif from the written frames."""
    import meshio
    from .render import hstack_images, write_animation, write_png
    plys = [f for f in frames if f.startswith("particles_")]
    if not plys:
        return
    vtus = {f.replace("colliders_", "").replace(".vtu", ""): f for f in frames if f.startswith("colliders_")}

    def image(name, w, h):
        m = meshio.read(frames_dir / name)
        body = m.point_data["body"].astype(np.int64)
        key = name.replace("particles_", "").replace(".ply", "")
        meshes = {}
        if key in vtus:
            mv = meshio.read(frames_dir / vtus[key])
            meshes = {"colliders": (mv.points, mv.cells_dict["triangle"])}
        return scene.render({"particles": (m.points, {"body": body}), "meshes": meshes}, width=w, height=h)

    picks = sorted(set(np.linspace(0, len(plys) - 1, min(4, len(plys))).round().astype(int)))
    write_png(out / "preview.png", hstack_images([image(plys[i], 360, 300) for i in picks]))
    if video:
        try:
            import imageio  # noqa: F401
        except ImportError:
            return
        stride = max(1, len(plys) // 150)
        write_animation(out / "animation.gif", [image(p, 320, 240) for p in plys[::stride]], fps=20)
