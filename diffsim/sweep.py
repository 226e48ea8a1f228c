"""Parameter sweeps: every combination of scene options as an independent run, on Ray (the
machine's cores, or a cluster with ``address``) or serially in this process.

    rows = ds.sweep("scenes/elastic_drop.py", "runs/sweep", grid={"E": [2e4, 5e4]},
                    random={"friction": (0.1, 0.5)}, samples=3, seeds=[0, 1], steps=500)

Each run writes what ``diffsim run`` writes into ``OUT/runs/<id>/`` (``<id>`` is a hash of
the scene script, its options, seed, steps and frame interval, so runs never collide and a
re-invocation finds its runs again). ``OUT/manifest.jsonl`` holds one line per run
(options, seed, status, output folder, wall time, attempts, error, host, Ray node), rewritten atomically
after every finished run; ``OUT/summary.csv`` tabulates the options and the scalars of
every run's ``summary.json``. Re-running the same sweep skips completed runs and retries
failed or diverged ones until ``retries`` further attempts were used; a run that raises or
diverges is recorded and does not stop the others.

On Ray each run is a task (``num_cpus=threads``, ``num_gpus=gpus_per_run``) in a worker
process holding one Taichi runtime (``diffsim.init`` in the worker; Taichi has no
multi-GPU support of its own, so one process per GPU); a worker process that dies is
retried by Ray itself (``retries`` times) before the run is recorded as failed. Ray is an
optional dependency: ``pip install -e ".[cluster]"``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

from . import io as dio
from .errors import DiffsimError, InvalidScene, SweepInterrupted

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.csv"
DATASET = "dataset.json"
DATASET_FORMAT = "diffsim-dataset/1"
SPLIT = (0.8, 0.1, 0.1)   # train, val, test fractions


def expand(grid: dict | None = None, random: dict | None = None, samples: int = 1, seeds=(0,),
           sample_seed: int = 0) -> list[dict]:
    """The runs of a sweep as ``[{"options": {...}, "seed": s}]``: the Cartesian product of
    ``grid`` (``{key: [values]}``), ``samples`` draws of ``random`` (``{key: (lo, hi)}``,
    uniform, from ``numpy.random.default_rng(sample_seed)``: the same on every invocation)
    and ``seeds``."""
    grid = dict(grid or {})
    random = dict(random or {})
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise InvalidScene(f"grid {key!r} needs a non-empty list of values, got {values!r}")
    for key, bounds in random.items():
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and float(bounds[0]) <= float(bounds[1])):
            raise InvalidScene(f"random {key!r} needs (lo, hi) with lo <= hi, got {bounds!r}")
    if set(grid) & set(random):
        raise InvalidScene(f"options both on the grid and random: {sorted(set(grid) & set(random))}")
    if int(samples) < 1:
        raise InvalidScene(f"samples must be >= 1, got {samples}")
    seeds = list(seeds)
    if not seeds:
        raise InvalidScene("seeds must not be empty")
    rng = np.random.default_rng(sample_seed)
    keys = sorted(random)
    draws = [{k: float(rng.uniform(*map(float, random[k]))) for k in keys} for _ in range(int(samples if random else 1))]
    gkeys = sorted(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in gkeys)):
        for draw in draws:
            for seed in seeds:
                out.append({"options": {**dict(zip(gkeys, combo)), **draw}, "seed": int(seed)})
    return out


def run_id(script: str, options: dict, seed: int, steps, every) -> str:
    key = json.dumps({"script": str(Path(script).resolve()), "options": options, "seed": seed, "steps": steps,
                      "every": every}, sort_keys=True, default=str)
    return "run-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def run_one(script: str, options: dict, seed: int, steps, every, out: str, precision: str = "f32",
            threads: int | None = 1, deterministic: bool = False, record: bool = False,
            seed_option: bool = False) -> dict:
    """One run (in a worker process or here): ``diffsim run`` of ``script`` with ``options``
    into ``out`` (replacing an earlier attempt), or with ``record`` its trajectory
    (``out/trajectory.npz``, a frame every ``every`` substeps) and a ``summary.json``.
    ``seed_option``: the scene's ``build`` takes a ``seed`` (it gets the run's seed).
    Returns the manifest fields it determines; errors are returned, not raised."""
    import torch

    from . import runtime
    from .runner import run_scene
    from .scene import build_scene
    t0 = time.perf_counter()
    try:
        if runtime._config is None:
            runtime.init(precision=precision, threads=threads, deterministic=deterministic)
        np.random.seed(seed)
        torch.manual_seed(seed)
        opts = dict(options)
        if seed_option:
            opts.setdefault("seed", seed)
        scene = build_scene(script, opts)
        if record:
            result = _record_run(scene, script, steps, every, Path(out), t0)
        else:
            summary = run_scene(scene, out, steps=steps, every=every, progress=False, video=False, overwrite=True)
            result = {"status": summary["status"], "error": summary.get("error")}
    except DiffsimError as exc:
        status = "diverged" if type(exc).__name__ == "SimulationDiverged" else "failed"
        result = {"status": status, "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # a run's bug must not stop the sweep: recorded with its type
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {**result, "wall_s": time.perf_counter() - t0, **_where()}


def _where() -> dict:
    """Where a run ran (the manifest's ``host`` and, on Ray, ``node``: the Ray node id): on a
    cluster, a run that fails on one machine only points at that machine's environment."""
    node = None
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    return {"host": socket.gethostname(), "node": node}


def _record_run(scene, script, steps, every, out: Path, t0) -> dict:
    """A run that records its trajectory (the dataset mode of a sweep) and, per frame, the
    traces and outputs a ``diffsim run`` summary has (a hopper's discharge figures)."""
    from .runner import _trace_row, trace_table
    from .trajectory import record
    steps = int(steps or scene.steps)
    every = int(every or scene.every)
    rows = []
    traj = record(scene, steps, every, progress=False, script=script,
                  on_frame=lambda s: rows.append(_trace_row(s.diagnostics(), s.trace_columns)))
    traj.positions = traj.positions.astype(np.float32)  # 0.1 um at 1 m: plenty for data, half the disk
    traj.velocities = traj.velocities.astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    traj.save(out / "trajectory.npz")
    wall = time.perf_counter() - t0
    summary = {"scene": scene.name, "status": "completed", "error": None, "steps": steps, "every": every,
               "frames": int(traj.frames), "particles": int(traj.positions.shape[1]), "wall_time_s": wall,
               "simulated_time": steps * scene.dt, "options": scene.options,
               "traces": trace_table(rows)}
    summary["outputs"] = scene.outputs(summary["traces"])
    dio.atomic_write_json(out / "summary.json", summary)
    return {"status": "completed", "error": None}


def split_of(run_id: str, fractions=SPLIT) -> str:
    """``train``/``val``/``test`` of a run, from its id's hash: stable when a sweep grows
    (adding runs never moves an existing one to another split)."""
    u = int(run_id.split("-")[-1][:8], 16) / 16 ** 8
    train, val, _ = fractions
    return "train" if u < train else ("val" if u < train + val else "test")


def load_dataset(path, split: str | None = None) -> list:
    """The trajectories of a recorded sweep (``OUT`` or ``OUT/dataset.json``), of one split
    (``"train"``, ``"val"``, ``"test"``) or all, as :class:`~diffsim.Trajectory` objects
    with ``options`` and ``seed`` in their metadata's ``run`` entry."""
    from .trajectory import load_trajectory
    path = Path(path)
    index = path / DATASET if path.is_dir() else path
    if not index.exists():
        raise InvalidScene(f"{index}: no dataset index; run the sweep with record=True (diffsim sweep --record)")
    data = json.loads(index.read_text())
    if data.get("format") != DATASET_FORMAT:
        raise InvalidScene(f"{index}: not a {DATASET_FORMAT} index (format {data.get('format')!r})")
    if split not in (None, "train", "val", "test"):
        raise InvalidScene(f"split must be 'train', 'val', 'test' or None, got {split!r}")
    out = []
    for run in data["runs"]:
        if split is None or run["split"] == split:
            traj = load_trajectory(index.parent / run["path"])
            traj.metadata["run"] = {k: run[k] for k in ("id", "options", "seed", "split")}
            out.append(traj)
    return out


def sweep(script, out, grid: dict | None = None, random: dict | None = None, samples: int = 1, seeds=(0,),
          steps: int | None = None, every: int | None = None, backend: str = "ray", workers: int | None = None,
          address: str | None = None, threads: int = 1, gpus_per_run: float = 0, retries: int = 2,
          precision: str = "f32", deterministic: bool = False, record: bool = False,
          progress: bool = True) -> list[dict]:
    """Run a sweep (see the module docstring); returns the manifest rows.

    Args:
        script: scene script (path or built-in name). out: the sweep's folder.
        grid, random, samples, seeds: the runs (:func:`expand`).
        steps, every: as ``diffsim run`` (default: the scene's).
        backend: ``"ray"`` or ``"serial"`` (in this process, one run after the other).
        workers: local Ray CPUs (default: all cores); ignored with ``address``.
        address: a Ray cluster to join (``"auto"`` or ``"HOST:6379"``; see the README).
        threads: CPU threads per run (its Ray ``num_cpus``). gpus_per_run: Ray ``num_gpus``.
        retries: further attempts for a failed run (Ray: also after a worker process died).
        precision, deterministic: the workers' runtime (as ``diffsim run``).
        record: a dataset instead of ``diffsim run`` outputs: each run records its
            trajectory (``runs/<id>/trajectory.npz``, a frame every ``every`` substeps) and
            ``OUT/dataset.json`` indexes the completed ones with a train/val/test split
            (:func:`split_of`; read them with :func:`load_dataset`).
    """
    import inspect

    from .progress import Progress
    from .scene import load_script, resolve_script
    if backend not in ("ray", "serial"):
        raise InvalidScene(f"backend must be 'ray' or 'serial', got {backend!r}")
    if int(retries) < 0:
        raise InvalidScene(f"retries must be >= 0, got {retries}")
    script = str(Path(resolve_script(script)).resolve())
    seed_option = "seed" in inspect.signature(load_script(script).build).parameters   # once, not per run
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _load_manifest(out)
    todo = []
    for run in expand(grid, random, samples, seeds):
        rid = run_id(script, run["options"], run["seed"], steps, every)
        row = rows.get(rid) or {"id": rid, "options": run["options"], "seed": run["seed"], "steps": steps,
                                "every": every, "out": str(out / "runs" / rid), "status": "pending", "attempts": 0,
                                "wall_s": None, "error": None, "host": None, "node": None}
        rows[rid] = row
        done = row["status"] == "completed" and (Path(row["out"]) / "summary.json").exists()
        if not done and (row["status"] == "pending" or row["attempts"] <= int(retries)):
            todo.append(row)
    summaries = {}                       # run id -> its summary.json, read once
    dataset = script if record else None
    _write(out, rows, summaries, dataset)
    args = lambda r: (script, r["options"], r["seed"], steps, every, r["out"], precision, threads,  # noqa: E731
                      deterministic, record, seed_option)
    with Progress(total=len(todo), desc=f"sweep {Path(script).stem}", unit="run", disable=not progress) as bar:
        def finish(row, result):
            row.update(result)
            row["attempts"] += 1
            summaries.pop(row["id"], None)
            _write(out, rows, summaries, dataset)
            bar.update(1, failed=sum(r["status"] != "completed" for r in rows.values() if r["attempts"]))
        try:
            if backend == "serial":
                for row in todo:
                    finish(row, run_one(*args(row)))
            else:
                _run_on_ray(todo, args, finish, workers, address, threads, gpus_per_run, retries)
        except KeyboardInterrupt:
            _write(out, rows, summaries, dataset)
            raise SweepInterrupted(sum(r["status"] == "completed" for r in rows.values()), len(rows), str(out)) from None
    return list(rows.values())


def plot(out, x: str, y: str, path=None):
    """Plot a run output ``y`` (a scalar of the runs' ``summary.json``, e.g. ``wall_time_s``,
    one of its ``outputs``, e.g. ``outflow_rate``, or of its ``traces`` at the last frame,
    e.g. ``kinetic``) against a swept option ``x``
    for the completed runs of the sweep in ``out``, one series per seed; written to
    ``OUT/plot_<y>_vs_<x>.png`` (or ``path``). Returns the path."""
    from .plot import write_plot
    out = Path(out)
    rows = [r for r in _load_manifest(out).values() if r["status"] == "completed"]
    if not rows:
        raise InvalidScene(f"{out}: no completed runs to plot")
    if any(x not in r["options"] for r in rows):
        raise InvalidScene(f"option {x!r} was not swept; swept: {sorted({k for r in rows for k in r['options']})}")
    series = {}
    for r in rows:
        s = json.loads((Path(r["out"]) / "summary.json").read_text())
        traces = s.get("traces") or {}
        outputs = s.get("outputs") or {}
        if y in s and isinstance(s[y], (int, float)):
            value = s[y]
        elif isinstance(outputs.get(y), (int, float)):
            value = outputs[y]
        elif y in traces and traces[y]:
            value = traces[y][-1]
        else:
            raise InvalidScene(f"{y!r} is neither a scalar of summary.json, an output nor a trace: scalars "
                               f"{sorted(k for k, v in s.items() if isinstance(v, (int, float)))}, outputs "
                               f"{sorted(outputs)}, traces {sorted(traces)}")
        series.setdefault(f"seed {r['seed']}", []).append((float(r["options"][x]), float(value)))
    series = {k: tuple(map(list, zip(*sorted(v)))) for k, v in series.items()}
    path = Path(path) if path else out / f"plot_{y}_vs_{x}.png"
    write_plot(path, series, xlabel=x, ylabel=y, title=f"{y} against {x}", markers=True)
    return path


def start_ray(workers: int | None = None, address: str | None = None):
    """Connect to the Ray cluster at ``address`` (``"auto"``: the one running on this
    machine), or start a new local instance with ``workers`` CPUs (even where another one
    runs here: Ray's default would join that one, and refuse ``num_cpus``), unless this
    process is connected already; returns the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise InvalidScene('the Ray backend needs Ray: pip install -e ".[cluster]" (or backend="serial")') from None
    if not ray.is_initialized():
        kw = {"address": address} if address else {"address": "local", "num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    return ray


def _run_on_ray(todo, args, finish, workers, address, threads, gpus_per_run, retries):
    ray = start_ray(workers, address)
    task = ray.remote(num_cpus=threads, num_gpus=gpus_per_run, max_retries=int(retries))(run_one)
    pending = {task.remote(*args(row)): row for row in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            row = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # the worker process died (after Ray's own retries)
                result = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                          "wall_s": None}
            finish(row, result)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    rows = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InvalidScene(f"{path}: line {i + 1} is not JSON; the manifest is damaged") from None
            rows[row["id"]] = row
    return rows


def _summary(row: dict, cache: dict) -> dict:
    """A run's ``summary.json`` ({} while it has none), read once into ``cache``."""
    if row["id"] not in cache:
        path = Path(row["out"]) / "summary.json"
        try:
            cache[row["id"]] = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            cache[row["id"]] = {}
    return cache[row["id"]]


def _write(out: Path, rows: dict, summaries: dict, dataset_script: str | None = None):
    """The manifest and the summary table (and, for a recorded sweep, the dataset index),
    each written atomically; ``summaries``: the runs' summaries read so far."""
    dio.atomic_write_text(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values()))
    keys = sorted({k for r in rows.values() for k in r["options"]})
    scalars = ("status", "steps", "particles", "wall_time_s", "particle_steps_per_s", "simulated_time")
    outputs = sorted({k for r in rows.values() for k in _summary(r, summaries).get("outputs") or {}})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "seed", *keys, *scalars, *outputs, "error"])
    for r in rows.values():
        s = {**_summary(r, summaries), "status": r["status"]}
        out_values = s.get("outputs") or {}
        w.writerow([r["id"], r["seed"], *(r["options"].get(k, "") for k in keys), *(s.get(k, "") for k in scalars),
                    *("" if out_values.get(k) is None else out_values[k] for k in outputs), r["error"] or ""])
    dio.atomic_write_text(out / SUMMARY, buf.getvalue())
    if dataset_script is not None:
        runs = []
        for r in rows.values():
            path = Path(r["out"]) / "trajectory.npz"
            if r["status"] == "completed" and path.exists():
                s = _summary(r, summaries)
                runs.append({"id": r["id"], "path": str(path.relative_to(out)), "options": r["options"],
                             "seed": r["seed"], "frames": s["frames"], "particles": s["particles"],
                             "split": split_of(r["id"])})
        dio.atomic_write_json(out / DATASET, {
            "format": DATASET_FORMAT, "scene": dataset_script, "runs": runs,
            "split_rule": f"by the run id's hash: the first 8 hex digits / 16^8 below {SPLIT[0]} train, below "
                          f"{SPLIT[0] + SPLIT[1]:.2f} val, else test (stable when the sweep grows)",
            "splits": {k: sum(r["split"] == k for r in runs) for k in ("train", "val", "test")}})
