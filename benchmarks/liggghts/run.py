#!/usr/bin/env python3
"""Run the LIGGGHTS 3.8 silo-discharge benchmark with 1 and 2 MPI processes and print one
JSON object per case.

  python3 run.py [--steps 15000] [--np 1 2] [--grid "2 1 1"] [--wait-for FILE] [--done-file FILE]

Each case runs `mpirun -np P liggghts -in silo.in -var nsteps N` in this folder, parses the
thermo table (atom count every 500 steps) and the "Loop time of X on P procs" line, and
reports throughput and discharge rate.  Logs go to log.np<P>.lammps / out.np<P>.txt.
"""
import argparse, json, os, re, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
SCENE = os.environ.get("DEM_SILO_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scenes", "data", "dem_silo"))
P = json.load(open(os.path.join(SCENE, "params.json")))
DT, N0, MASS = P["dt"], P["n_particles"], P["particle_mass"]


def mpirun_cmd(nproc):
    cmd = ["mpirun", "-np", str(nproc)]
    if os.geteuid() == 0:
        cmd += ["--allow-run-as-root", "--oversubscribe"]
    return cmd


def parse(text):
    rows, header = [], None
    for line in text.splitlines():
        tok = line.split()
        if tok[:2] == ["Step", "Atoms"]:
            header = tok
            continue
        if header is not None:
            if line.startswith("Loop time"):
                header = None
                continue
            try:
                vals = [float(t) for t in tok]
            except ValueError:
                continue
            if len(vals) == len(header):
                rows.append((int(vals[0]), int(vals[1])))
    m = re.search(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps", text)
    if not m or not rows:
        raise RuntimeError("could not parse LIGGGHTS output")
    grid = re.search(r"(\d+ by \d+ by \d+) MPI processor grid", text)
    return rows, float(m.group(1)), int(m.group(2)), int(m.group(3)), grid.group(1) if grid else None


def slope(ts, ys):
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx if sxx > 0 else float("nan")


def run_case(nproc, steps, datafile, grid):
    log = os.path.join(HERE, f"log.np{nproc}.lammps")
    cmd = mpirun_cmd(nproc) + ["liggghts", "-in", "silo.in", "-var", "nsteps", str(steps),
                               "-var", "datafile", datafile, "-log", log]
    if nproc > 1 and grid:
        px, py, pz = grid.split()
        cmd += ["-var", "px", px, "-var", "py", py, "-var", "pz", pz]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    wall = time.time() - t0
    with open(os.path.join(HERE, f"out.np{nproc}.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n" + res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"LIGGGHTS failed (rc {res.returncode}); see out.np{nproc}.txt")
    rows, loop_s, procs, nsteps, grid = parse(res.stdout)
    t = [s * DT for s, _ in rows]
    mass = [(N0 - a) * MASS for _, a in rows]
    sel = [i for i, ti in enumerate(t) if ti >= 0.2 - 1e-12]
    if len(sel) < 3:  # run too short for the t >= 0.2 s window
        sel, window = list(range(len(t))), [t[0], t[-1]]
    else:
        window = [t[sel[0]], t[-1]]
    mean_n = sum(a for _, a in rows) / len(rows)
    return {
        "case": f"liggghts_silo_np{nproc}",
        "steps": nsteps,
        "mean_particles": mean_n,
        "loop_s": loop_s,
        "particle_steps_per_s": mean_n * nsteps / loop_s,
        "discharged_kg": (N0 - rows[-1][1]) * MASS,
        "flow_rate_kg_s": slope([t[i] for i in sel], [mass[i] for i in sel]),
        "flow_window_s": window,
        "final_atoms": rows[-1][1],
        "procs": procs,
        "proc_grid": grid,
        "process_wall_s": round(wall, 3),
        "atoms_every_500": [a for _, a in rows],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15000)
    ap.add_argument("--np", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--grid", default="2 1 1",
                    help="MPI grid for np > 1 ('* * *' = LIGGGHTS default, which is 1 1 2 here)")
    ap.add_argument("--wait-for", help="poll (every 20 s) until this file exists before running")
    ap.add_argument("--wait-max", type=float, default=2700.0, help="max seconds to wait")
    ap.add_argument("--done-file", help="touch this file when all cases are finished")
    ap.add_argument("--results", default=os.path.join(HERE, "results.jsonl"))
    a = ap.parse_args()

    if not shutil.which("liggghts"):
        sys.exit("liggghts not found (apt-get install -y liggghts)")
    datafile = os.path.join(HERE, "silo.data")
    if not os.path.exists(datafile):
        subprocess.run([sys.executable, os.path.join(HERE, "make_data.py"), datafile], check=True)

    if a.wait_for:
        t0 = time.time()
        while not os.path.exists(a.wait_for) and time.time() - t0 < a.wait_max:
            time.sleep(20)
        found = os.path.exists(a.wait_for)
        print(f"# wait for {a.wait_for}: {'found' if found else 'NOT found, running anyway'} "
              f"after {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    with open(a.results, "a") as f:
        for nproc in a.np:
            r = run_case(nproc, a.steps, datafile, a.grid)
            r["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            print(json.dumps(r), flush=True)
            f.write(json.dumps(r) + "\n")
    if a.done_file:
        open(a.done_file, "w").close()


if __name__ == "__main__":
    main()
