"""diffsim sweep: expansion, manifest, skipping finished runs, retries, outputs equal to
single runs; serially here, and on a local Ray instance with 2 workers (where a worker
process dies mid-sweep) when Ray is installed (the `cluster` extra; CI installs it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffsim as ds
from diffsim.runner import run_scene
from diffsim.scene import build_scene
from diffsim.sweep import MANIFEST, SUMMARY, expand


SCENE = '''"""Tiny sweep scene: particles with learned drag; `fail` raises once, `die` kills the
process once (a marker file remembers the first attempt), `always_fail` always raises,
`pause` seconds of set-up keep a worker busy."""
import os
import time
import numpy as np
import diffsim as ds
from diffsim.learned.damping import LinearDamping


def build(rate=1.0, particles=12, fail=False, die=False, always_fail=False, marker="", seed=0, pause=0.0):
    time.sleep(pause)
    if always_fail:
        raise ds.InvalidScene("this run always fails")
    if (fail or die) and marker and not os.path.exists(marker):
        open(marker, "w").close()
        if die:
            os._exit(3)           # the worker process dies
        raise RuntimeError("first attempt fails")
    rng = np.random.default_rng(seed)
    m = LinearDamping(rng.normal(0, 0.01, (particles, 3)), rng.normal(0, 0.5, (particles, 3)), dt=1e-3, rate=rate)
    return ds.Scene(m, name="tiny", steps=60, every=20)
'''


@pytest.fixture
def scene_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(SCENE)
    return path


def _manifest(out):
    return [json.loads(line) for line in (Path(out) / MANIFEST).read_text().splitlines()]


def _final(run_dir):
    with np.load(Path(run_dir) / "checkpoint.npz") as z:
        return {k: z[k].copy() for k in z.files if k in ("x", "v")}


def test_expand_grid_random_and_seeds():
    runs = expand(grid={"a": [1, 2], "b": ["x"]}, random={"c": (0.0, 1.0)}, samples=3, seeds=[0, 5])
    assert len(runs) == 2 * 3 * 2
    assert {r["options"]["a"] for r in runs} == {1, 2} and {r["seed"] for r in runs} == {0, 5}
    assert all(0 <= r["options"]["c"] <= 1 for r in runs)
    assert runs == expand(grid={"a": [1, 2], "b": ["x"]}, random={"c": (0.0, 1.0)}, samples=3, seeds=[0, 5])
    with pytest.raises(ds.InvalidScene, match="lo <= hi"):
        expand(random={"c": (1.0, 0.0)})
    with pytest.raises(ds.InvalidScene, match="both on the grid and random"):
        expand(grid={"c": [1]}, random={"c": (0, 1)})


def test_serial_sweep_records_skips_retries_and_matches_single_runs(scene_file, tmp_path):
    out = tmp_path / "sweep"
    marker = str(tmp_path / "first_attempt")
    grid = {"rate": [0.5, 2.0], "fail": [False, True], "marker": [marker]}
    rows = ds.sweep(scene_file, out, grid=grid, seeds=[0, 1], backend="serial", progress=False)
    status = {(r["options"]["rate"], r["options"]["fail"], r["seed"]): r["status"] for r in rows}
    assert len(rows) == 8 and sum(s == "completed" for s in status.values()) == 7
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "RuntimeError: first attempt fails" in failed[0]["error"]
    assert len({r["out"] for r in rows}) == 8                                 # no two runs share a folder
    table = (out / SUMMARY).read_text().splitlines()
    assert len(table) == 9 and "particle_steps_per_s" in table[0]
    # again: the completed runs are skipped, the failed one retried (and now succeeds)
    mtimes = {r["id"]: (Path(r["out"]) / "summary.json").stat().st_mtime_ns for r in rows if r["status"] == "completed"}
    rows2 = ds.sweep(scene_file, out, grid=grid, seeds=[0, 1], backend="serial", progress=False)
    assert all(r["status"] == "completed" for r in rows2)
    assert {r["id"]: r["attempts"] for r in rows2} == {r["id"]: 1 if r["status"] == "completed" else 2 for r in rows}
    assert all((Path(r["out"]) / "summary.json").stat().st_mtime_ns == mtimes[r["id"]] for r in rows2 if r["id"] in mtimes)
    # a run equals the same scene run alone
    r = next(r for r in rows2 if r["options"]["rate"] == 2.0 and r["seed"] == 1 and not r["options"]["fail"])
    alone = tmp_path / "alone"
    run_scene(build_scene(scene_file, {**r["options"], "seed": 1}), alone, progress=False, video=False)
    a, b = _final(r["out"]), _final(alone)
    assert a.keys() == {"x", "v"} and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_that_always_fails_stops_after_its_retries(scene_file, tmp_path):
    out = tmp_path / "sweep"
    for _ in range(4):
        rows = ds.sweep(scene_file, out, grid={"always_fail": [True]}, backend="serial", retries=1, progress=False)
    assert rows[0]["status"] == "failed" and rows[0]["attempts"] == 2       # 1 + 1 retry, then left alone
    assert "InvalidScene: this run always fails" in rows[0]["error"]


def test_cli_sweep_one_line_summary_and_bad_input(scene_file, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "diffsim", "sweep", str(scene_file), "--out", str(out), "--backend", "serial",
           "--grid", "rate=0.5,1.5", "--random", "particles=4:4", "--seeds", "0", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["completed"] == 2
    assert len(_manifest(out)) == 2
    bad = subprocess.run(cmd[:7] + ["--backend", "serial", "--random", "particles=4-8"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("diffsim: error: --random particles")


def test_ray_sweep_survives_a_dying_worker_and_matches_serial(scene_file, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]'); CI installs it")
    import ray
    marker = str(tmp_path / "died_once")
    grid = {"rate": [0.5, 1.0, 2.0], "die": [False], "marker": [marker]}
    out_ray, out_serial = tmp_path / "ray", tmp_path / "serial"
    env_before = os.environ.get("DIFFSIM_CACHE")
    try:
        rows = ds.sweep(scene_file, out_ray, grid={**grid, "die": [False, True]}, seeds=[0], backend="ray", workers=2,
                        precision="f64", progress=False)
        assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
        assert len(rows) == 6 and os.path.exists(marker)       # one worker process died and Ray re-ran its task
        again = ds.sweep(scene_file, out_ray, grid={**grid, "die": [False, True]}, seeds=[0], backend="ray",
                         workers=2, precision="f64", progress=False)
        assert [r["attempts"] for r in again] == [1] * 6      # everything skipped
    finally:
        ray.shutdown()
        assert os.environ.get("DIFFSIM_CACHE") == env_before
    serial = ds.sweep(scene_file, out_serial, grid=grid, seeds=[0], backend="serial", progress=False)
    by_opts = {json.dumps(r["options"], sort_keys=True): r for r in rows}
    for r in serial:
        twin = by_opts[json.dumps(r["options"], sort_keys=True)]
        a, b = _final(r["out"]), _final(twin["out"])
        assert all(np.array_equal(a[k], b[k]) for k in a), r["options"]


def test_ray_sweep_joins_a_cluster_and_spreads_over_its_nodes(scene_file, tmp_path):
    """Two Ray nodes (raylets) on this machine, one CPU each, stand in for a cluster: the sweep
    joins it by address, like ``diffsim sweep --address HEAD:6379``, and both nodes run runs.
    Without an address a sweep starts its own instance beside it (Ray's default would join
    the running one and refuse the worker count)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]'); CI installs it")
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        own = ds.sweep(scene_file, tmp_path / "own", grid={"rate": [0.5, 1.0]}, seeds=[0], backend="ray", workers=2,
                       precision="f64", progress=False)
        ray.shutdown()
        rows = ds.sweep(scene_file, tmp_path / "cluster", grid={"rate": [0.5, 1.0, 2.0, 4.0], "pause": [1.0]},
                        seeds=[0], backend="ray", address=cluster.address, precision="f64", progress=False)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert all(r["status"] == "completed" for r in rows + own), [r["error"] for r in rows + own]
    assert len(nodes) == 2 and {r["node"] for r in rows} == nodes       # every node ran some of the runs
    assert not {r["node"] for r in own} & nodes                          # its own instance, not the cluster
    assert all(r["host"] for r in _manifest(tmp_path / "cluster"))       # and the manifest says where


def test_ray_missing_gives_a_clear_error(scene_file, tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ds.InvalidScene, match=r'pip install -e "\.\[cluster\]"'):
        ds.sweep(scene_file, tmp_path / "x", grid={"rate": [1.0]}, backend="ray", progress=False)


def test_readme_scene_is_sweepable_serially(tmp_path):
    """A built-in scene by name (the learned-drag scene: no solver compile)."""
    rows = ds.sweep("learned_drag", tmp_path / "s", grid={"rate": [1.0, 3.0]}, steps=40, every=20,
                    backend="serial", progress=False)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    finals = [_final(r["out"]) for r in rows]
    assert not np.array_equal(finals[0]["v"], finals[1]["v"])               # the option reached the scene



def test_recorded_sweep_is_a_dataset_with_stable_splits(scene_file, tmp_path):
    from diffsim.sweep import load_dataset, split_of
    out = tmp_path / "data"
    rows = ds.sweep(scene_file, out, grid={"rate": [0.5, 1.0, 2.0, 4.0]}, seeds=[0, 1, 2], steps=40, every=10,
                    record=True, backend="serial", progress=False)
    assert all(r["status"] == "completed" for r in rows) and len(rows) == 12
    index = json.loads((out / "dataset.json").read_text())
    assert index["format"] == "diffsim-dataset/1" and len(index["runs"]) == 12
    assert sum(index["splits"].values()) == 12 and index["splits"]["train"] >= 6
    assert all(run["split"] == split_of(run["id"]) and run["frames"] == 5 for run in index["runs"])
    train = load_dataset(out, "train")
    assert len(train) == index["splits"]["train"] and all(t.positions.shape == (5, 12, 3) for t in train)
    t = train[0]
    first = build_scene(scene_file, {**t.metadata["run"]["options"], "seed": t.metadata["run"]["seed"]})
    assert t.positions.dtype == np.float32 and t.velocities.dtype == np.float32   # datasets store float32
    np.testing.assert_array_equal(t.positions[0], first.solver.initial_state().x.numpy().astype(np.float32))
    assert sum(len(load_dataset(out, s)) for s in ("train", "val", "test")) == 12
    # growing the sweep keeps every earlier run in its split
    before = {run["id"]: run["split"] for run in index["runs"]}
    ds.sweep(scene_file, out, grid={"rate": [0.5, 1.0, 2.0, 4.0, 8.0]}, seeds=[0, 1, 2], steps=40, every=10,
             record=True, backend="serial", progress=False)
    after = {run["id"]: run["split"] for run in json.loads((out / "dataset.json").read_text())["runs"]}
    assert len(after) == 15 and all(after[k] == v for k, v in before.items())
    with pytest.raises(ds.InvalidScene, match="no dataset index"):
        load_dataset(tmp_path)


def test_plot_an_output_against_a_swept_option(scene_file, tmp_path):
    from diffsim.sweep import plot
    out = tmp_path / "p"
    ds.sweep(scene_file, out, grid={"rate": [0.5, 1.0, 2.0]}, seeds=[0, 1], backend="serial", progress=False)
    path = plot(out, "rate", "kinetic")
    assert path.name == "plot_kinetic_vs_rate.png" and path.stat().st_size > 1000
    with pytest.raises(ds.InvalidScene, match="not swept"):
        plot(out, "particles", "kinetic")
    with pytest.raises(ds.InvalidScene, match="neither a scalar"):
        plot(out, "rate", "nonsense")
