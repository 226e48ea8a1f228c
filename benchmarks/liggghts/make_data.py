#!/usr/bin/env python3
"""Convert the settled silo bed (settled_state.csv) into a LAMMPS/LIGGGHTS data file
(atom_style granular: id type diameter density x y z; Velocities: id vx vy vz wx wy wz)."""
import csv, json, os, sys

SCENE = os.environ.get("DEM_SILO_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scenes", "data", "dem_silo"))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "silo.data")

p = json.load(open(os.path.join(SCENE, "params.json")))
rows = list(csv.DictReader(open(os.path.join(SCENE, "settled_state.csv"))))
b, zlo, zhi = p["box_xy"], p["box_zlo"], p["box_zhi"]
d, rho = 2.0 * p["radius"], p["density"]

with open(out, "w") as f:
    f.write("LIGGGHTS data file: settled silo bed from settled_state.csv\n\n")
    f.write(f"{len(rows)} atoms\n1 atom types\n\n")
    f.write(f"{-b:.9g} {b:.9g} xlo xhi\n{-b:.9g} {b:.9g} ylo yhi\n{zlo:.9g} {zhi:.9g} zlo zhi\n\n")
    f.write("Atoms\n\n")
    for r in rows:
        f.write(f"{r['id']} 1 {d:.9g} {rho:.9g} {r['x']} {r['y']} {r['z']}\n")
    f.write("\nVelocities\n\n")
    for r in rows:
        f.write(f"{r['id']} {r['vx']} {r['vy']} {r['vz']} {r['wx']} {r['wy']} {r['wz']}\n")
print(f"wrote {out}: {len(rows)} atoms, box xy +-{b}, z [{zlo}, {zhi}]")
