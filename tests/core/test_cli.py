"""The command line: scenes listing, a run's outputs, --resume, and the scene-reuse test."""
import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import diffsim as ds

TINY = '''"""Tiny test scene: a jelly cube drops on a sphere."""
import diffsim as ds


def build(E=2e3, grid=16):
    sim = ds.MPMSolver(grid=grid, dt=1e-3)
    sim.add_body(ds.Box((0.5, 0.5, 0.5), 0.2), ds.FixedCorotated(E=E, nu=0.3), name="cube")
    sim.add_collider(ds.SphereCollider(center=(0.55, 0.5, 0.25), radius=0.08, name="ball"))
    return ds.Scene(sim, steps=60, every=20)
'''


def _diffsim(*args, cwd=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "diffsim.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("scene") / "tiny.py"
    p.write_text(TINY)
    return p


def test_scenes_lists_builtin_scenes_with_docstrings():
    r = _diffsim("scenes")
    assert r.returncode == 0, r.stderr
    for name in ("elastic_drop", "sand_column", "plasticine_press", "fluid_dam_break", "mixed_materials",
                 "mesh_object_drop"):
        assert name in r.stdout
    assert "Drucker-Prager" in r.stdout


def test_run_writes_frames_preview_and_summary(tiny, tmp_path):
    out = tmp_path / "run"
    r = _diffsim("run", tiny, "--out", out, "--set", "E=3e3")
    assert r.returncode == 0, r.stderr
    assert "tiny" in r.stderr  # progress bar
    frames = sorted((out / "frames").glob("particles_*.ply"))
    assert len(frames) == 4  # steps 0, 20, 40, 60
    assert len(list((out / "frames").glob("colliders_*.vtu"))) == 4
    png = (out / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 60 and s["options"] == {"E": 3000.0}
    assert s["particle_steps_per_s"] > 0 and len(s["traces"]["energy"]) == 4
    assert len(s["traces"]["momentum"][0]) == 3
    import meshio
    m = meshio.read(frames[-1])
    assert m.points.shape == (s["particles"], 3) and "velocity_0" in m.point_data


def test_resume_continues_with_identical_results(tiny, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "interrupted"
    r = _diffsim("run", tiny, "--out", a, "--steps", 60, "--deterministic", "--quiet")
    assert r.returncode == 0, r.stderr
    r = _diffsim("run", tiny, "--out", b, "--steps", 20, "--deterministic", "--quiet")  # "interrupted" at 20
    assert r.returncode == 0, r.stderr
    r = _diffsim("run", tiny, "--out", b, "--steps", 60, "--resume", "--deterministic", "--quiet")
    assert r.returncode == 0, r.stderr
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert sb["resumed_from_step"] == 20 and sb["steps"] == 60
    import meshio
    for k in range(4):
        pa = meshio.read(a / "frames" / f"particles_{k:06d}.ply")
        pb = meshio.read(b / "frames" / f"particles_{k:06d}.ply")
        assert np.array_equal(pa.points, pb.points)
        assert np.array_equal(pa.point_data["velocity_2"], pb.point_data["velocity_2"])
    assert sa["traces"]["energy"] == sb["traces"]["energy"]


def test_resume_without_checkpoint_is_an_error(tiny, tmp_path):
    r = _diffsim("run", tiny, "--out", tmp_path / "none", "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr


def test_unknown_option_is_an_error(tiny, tmp_path):
    r = _diffsim("run", tiny, "--out", tmp_path / "x", "--set", "stiffness=3")
    assert r.returncode == 2 and "stiffness" in r.stderr and "available" in r.stderr


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.slow          # 53 s in CI; a leak check, not a correctness one
def test_200_scenes_in_one_process_do_not_grow_memory():
    from diffsim import pool
    created_before = pool.stats()["created"]     # other tests of this worker process count too
    rss = []
    for i in range(200):
        sim = ds.MPMSolver(grid=16, dt=1e-3)
        sim.add_body(ds.Box((0.5, 0.5, 0.5), 0.1 + 0.001 * (i % 7)), ds.FixedCorotated(E=1e3 + i), name="b")
        if i % 2:
            sim.add_collider(ds.PlaneCollider(point=(0, 0, 0.3)))
        sim.step(3)
        assert np.isfinite(sim.positions()).all()
        del sim
        gc.collect()
        if i in (19, 199):
            rss.append(_rss_mb())
    assert rss[1] - rss[0] < 50, rss
    assert pool.stats()["created"] - created_before <= 10


SLOW_TINY = TINY.replace("steps=60, every=20", "steps=100000, every=20")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_leaves_an_interrupted_summary_one_line_and_a_resume_command(tmp_path, signame):
    import signal
    import time
    scene = tmp_path / "long.py"
    scene.write_text(SLOW_TINY)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "stderr.txt", "w+")      # a file, not a pipe nobody reads while it runs

    def as_in_a_terminal():
        # a test suite started in the background of a non-interactive shell (as CI may be)
        # passes SIGINT on as ignored, and Python then keeps ignoring it; a terminal does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "diffsim.cli", "run", str(scene), "--out", str(out), "--quiet",
                             "--no-video", "--deterministic"], env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
                            preexec_fn=as_in_a_terminal)
    summary = out / "summary.json"
    deadline = time.time() + 300
    while time.time() < deadline:             # wait until it is stepping and has a checkpoint
        if (out / "checkpoint.npz").exists() and json.loads(summary.read_text())["status"] == "running":
            break
        time.sleep(0.2)
    assert json.loads(summary.read_text())["status"] == "running"
    time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:           # report what it was doing, leave no orphan
        proc.kill()
        proc.wait()
        pytest.fail(f"no exit 300 s after {signame}; stderr: {(tmp_path / 'stderr.txt').read_text()[-3000:]}")
    log.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted at step" in lines[0] and "--resume" in lines[0]
    s = json.loads(summary.read_text())
    assert s["status"] == "interrupted" and s["checkpoint_step"] and s["checkpoint_step"] % 20 == 0
    assert s["checkpoint_step"] <= s["steps"] and f"step {s['checkpoint_step']}" in s["error"]
    assert s["resume_command"].endswith("--resume") and s["resume_command"] in lines[0]
    # resumed to a little past the checkpoint: identical to an uninterrupted run
    import meshio
    stop = s["checkpoint_step"] + 40
    r = _diffsim("run", scene, "--out", out, "--resume", "--steps", stop, "--quiet", "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    assert json.loads(summary.read_text())["status"] == "completed"
    full = tmp_path / "full"
    r = _diffsim("run", scene, "--out", full, "--steps", stop, "--quiet", "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    last = f"particles_{stop // 20:06d}.ply"
    np.testing.assert_array_equal(meshio.read(out / "frames" / last).points, meshio.read(full / "frames" / last).points)


def test_missing_mesh_file_is_one_line(tmp_path):
    scene = tmp_path / "meshy.py"
    scene.write_text(TINY.replace('sim.add_collider(ds.SphereCollider(center=(0.55, 0.5, 0.25), radius=0.08, name="ball"))',
                                  'sim.add_collider(ds.MeshCollider("no_such_mesh.stl", name="m"))'))
    r = _diffsim("run", scene, "--out", tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("diffsim: error:") and "no_such_mesh.stl" in r.stderr


def test_rerun_into_an_old_run_is_refused_and_leaves_it_intact(tiny, tmp_path):
    out = tmp_path / "run"
    r = _diffsim("run", tiny, "--out", out, "--quiet", "--no-video")
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in (out / "frames").iterdir()}
    summary = (out / "summary.json").read_bytes()
    r = _diffsim("run", tiny, "--out", out, "--quiet", "--set", "E=-1")    # would fail
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--overwrite" in r.stderr
    assert {p.name: p.read_bytes() for p in (out / "frames").iterdir()} == before
    assert (out / "summary.json").read_bytes() == summary
    r = _diffsim("run", tiny, "--out", out, "--quiet", "--no-video", "--overwrite", "--steps", 40)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 40


def test_resume_carries_the_options_and_every_of_the_interrupted_run(tiny, tmp_path):
    out = tmp_path / "run"
    r = _diffsim("run", tiny, "--out", out, "--steps", 30, "--every", 10, "--set", "E=3e3", "--quiet",
                 "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    r = _diffsim("run", tiny, "--out", out, "--steps", 60, "--resume", "--quiet", "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["options"] == {"E": 3000.0} and s["every"] == 10 and s["steps"] == 60
    full = tmp_path / "full"
    r = _diffsim("run", tiny, "--out", full, "--steps", 60, "--every", 10, "--set", "E=3e3", "--quiet",
                 "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    import meshio
    last = sorted((out / "frames").glob("particles_*.ply"))[-1].name
    np.testing.assert_array_equal(meshio.read(out / "frames" / last).points, meshio.read(full / "frames" / last).points)
    r = _diffsim("run", tiny, "--out", out, "--steps", 90, "--resume", "--set", "E=4e3", "--quiet")
    assert r.returncode == 2 and "E=3000.0" in r.stderr and r.stderr.count("\n") == 1
    r = _diffsim("run", tiny, "--out", out, "--steps", 90, "--resume", "--every", 20, "--quiet")
    assert r.returncode == 2 and "every 10" in r.stderr


@pytest.mark.parametrize("value,words", [("grid=32.5", "an integer"), ("E=[1,2]", "a number"),
                                         ("grid=True", "an integer")])
def test_set_values_are_checked_against_the_option_types(tiny, tmp_path, value, words):
    r = _diffsim("run", tiny, "--out", tmp_path / "o", "--set", value, "--quiet")
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_arch_gpu_without_a_gpu_is_one_line(tiny, tmp_path):
    from diffsim.runtime import probe_gpu
    if probe_gpu() is not None:
        pytest.skip("this machine has a GPU")
    r = _diffsim("run", tiny, "--out", tmp_path / "o", "--arch", "gpu", "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("diffsim: error:") and "--arch cpu" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_data_generated_with_a_relative_scene_path_fits_from_another_folder(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "tiny.py").write_text(TINY)
    r = _diffsim("generate", "tiny.py", "--out", "d.npz", "--steps", 40, "--every", 20, "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    r = _diffsim("fit", "--data", work / "d.npz", "--params", "E", "--init", "E=1e3", "--iters", 2, "--quiet",
                 "--out", "fit", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["fitted"]["E"] > 0
    (work / "tiny.py").unlink()                                   # the script is gone: a hint, one line
    r = _diffsim("fit", "--data", work / "d.npz", "--params", "E", "--quiet", "--out", "fit2", cwd=elsewhere)
    assert r.returncode == 2 and "--scene" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_kill_9_then_resume_completes_identically_to_an_uninterrupted_run(tmp_path):
    import signal
    import time
    import meshio
    scene = tmp_path / "mid.py"
    scene.write_text(TINY.replace("steps=60, every=20", "steps=3000, every=20"))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "diffsim.cli", "run", str(scene), "--out", str(out), "--quiet",
                             "--no-video", "--deterministic"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint.npz").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "running" and s["pid"] == proc.pid    # what was known when it died
    r = _diffsim("run", scene, "--out", out, "--resume", "--quiet", "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 3000 and s["resumed_from_step"] > 0
    full = tmp_path / "full"
    r = _diffsim("run", scene, "--out", full, "--quiet", "--no-video", "--deterministic")
    assert r.returncode == 0, r.stderr
    frames = sorted(p.name for p in (full / "frames").glob("particles_*.ply"))
    assert frames == sorted(p.name for p in (out / "frames").glob("particles_*.ply"))
    for name in frames[-3:]:
        np.testing.assert_array_equal(meshio.read(out / "frames" / name).points,
                                      meshio.read(full / "frames" / name).points)
