"""The ``diffsim`` command line.

    diffsim run SCENE.py [--steps N] [--out DIR] [--arch cpu|gpu] [--every K] [--resume]
                         [--threads T] [--precision f32|f64] [--deterministic]
                         [--set key=value ...] [--quiet] [--no-video]
    diffsim scenes
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap


def _cmd_scenes(args) -> int:
    from .scene import list_scenes, scenes_dir
    scenes = list_scenes()
    if not scenes:
        print(f"no scene scripts found in {scenes_dir()}")
        return 1
    print(f"built-in scenes ({scenes_dir()}):\n")
    for name, doc in scenes:
        first, _, rest = doc.partition("\n")
        print(f"  {name}")
        print(textwrap.indent(textwrap.fill(first, 88), "      "))
        if rest.strip():
            print(textwrap.indent(rest.strip(), "      "))
        print()
    return 0


def _cmd_run(args) -> int:
    from . import runtime
    from .errors import DiffsimError
    from .runner import run_scene
    from .scene import build_scene, parse_options

    runtime.init(arch=args.arch, precision=args.precision, threads=args.threads, seed=args.seed,
                 deterministic=args.deterministic)
    try:
        options = parse_options(args.set)
        scene = build_scene(args.scene, options)
        out = args.out or f"runs/{scene.name}"
        summary = run_scene(scene, out, steps=args.steps, every=args.every, resume=args.resume,
                            progress=not args.quiet, video=not args.no_video)
    except DiffsimError as exc:
        print(f"diffsim: error: {exc}", file=sys.stderr)
        return 2
    brief = {k: summary[k] for k in ("scene", "status", "steps", "particles", "wall_time_s",
                                     "particle_steps_per_s")}
    brief["out"] = out
    print(json.dumps(brief))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="diffsim", description="Differentiable physics simulation (MPM).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scene script and write frames, a preview and summary.json")
    r.add_argument("scene", help="path of a scene script (or the name of a built-in scene)")
    r.add_argument("--steps", type=int, default=None, help="substeps to run (default: the scene's)")
    r.add_argument("--out", default=None, help="output folder (default: runs/SCENE)")
    r.add_argument("--arch", choices=("cpu", "gpu"), default="cpu")
    r.add_argument("--every", type=int, default=None, help="substeps between written frames")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint.npz")
    r.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    r.add_argument("--precision", choices=("f32", "f64"), default="f32")
    r.add_argument("--deterministic", action="store_true",
                   help="one CPU thread: bitwise reproducible (also across --resume)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="scene option (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-video", action="store_true", help="skip animation.gif even if imageio is installed")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("scenes", help="list the built-in scenes")
    s.set_defaults(func=_cmd_scenes)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
