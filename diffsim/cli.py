"""The ``diffsim`` command line.

    diffsim run SCENE.py [--steps N] [--out DIR] [--arch cpu|gpu] [--every K] [--resume]
                         [--threads T] [--precision f32|f64] [--deterministic]
                         [--set key=value ...] [--quiet] [--no-video]
    diffsim scenes
    diffsim generate SCENE.py --out data.npz [--steps N] [--every K] [--subsample F]
                              [--noise F] [--surface] [--set key=value ...]
    diffsim fit --data data.npz [--scene SCENE.py] --params E,nu [--init E=1e4 ...]
                [--optimizer lbfgs|adam] [--iters N] [--out DIR] [--resume]
    diffsim import-motion motion.npz --out data.npz [--grid 24] [--stiffness 1e4]
    diffsim train-law --data data.npz [more.npz ...] [--kind structured|potential|mlp] [--plastic] [--iters N]
                      [--window START,END] [--out law.pt]
    diffsim train-rom DATASET --out rom.pt [--config small|paper] [--iters N] [--resume]
    diffsim train-neuraldem DATASET --out hopper.pt [--iters N] [--resume] [--seed S]
    diffsim ensemble-neuraldem a.pt b.pt ... --out hopper.pt
    diffsim sweep SCENE.py --out DIR [--grid K=V1,V2] [--random K=LO:HI] [--record] ...
    diffsim tasks
    diffsim optimize TASK [--method grad|cmaes|ppo] [--budget N] [--out result.json]
                          [--set key=value ...] [--lr F] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import os
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
    from .runner import refuse_existing_run, resume_settings, run_scene
    from .scene import build_scene, parse_options

    _init_runtime(args)
    from pathlib import Path
    out = args.out or f"runs/{Path(args.scene).stem}"
    options, every = parse_options(args.set), args.every
    if args.resume:   # the interrupted run's options and frame interval (different ones refused)
        options, every = resume_settings(out, options, every)
    elif not args.overwrite:
        refuse_existing_run(out)      # before building: an earlier run's results stay intact
    scene = build_scene(args.scene, options)
    summary = run_scene(scene, out, steps=args.steps, every=every, resume=args.resume,
                        progress=not args.quiet, video=not args.no_video, overwrite=args.overwrite,
                        resume_command=_resume_command())
    brief = {k: summary[k] for k in ("scene", "status", "steps", "particles", "wall_time_s",
                                     "particle_steps_per_s")}
    brief["out"] = out
    print(json.dumps(brief))
    return 0


def _init_runtime(args):
    from . import runtime
    from .errors import DiffsimError
    try:
        runtime.init(arch=args.arch, precision=args.precision, threads=args.threads, seed=args.seed,
                     deterministic=getattr(args, "deterministic", False))
    except ValueError as exc:  # e.g. --threads 0
        raise DiffsimError(str(exc)) from None


def _cmd_generate(args) -> int:
    from .scene import build_scene, parse_options
    from .trajectory import record
    _init_runtime(args)
    scene = build_scene(args.scene, parse_options(args.set))
    steps = args.steps if args.steps is not None else scene.steps
    every = args.every if args.every is not None else scene.every
    traj = record(scene, steps, every, subsample=args.subsample, noise=args.noise,
                  surface_only=args.surface, seed=args.seed, progress=not args.quiet,
                  script=_script_reference(args.scene), full_state=args.full_state)
    traj.save(args.out)
    print(json.dumps({"out": args.out, "frames": traj.frames, "observed_particles": traj.observed,
                      "particles": traj.metadata["n_particles_scene"], "dt": traj.dt,
                      "noise_m": traj.metadata["observation"]["noise_m"]}))
    return 0


def _cmd_import_motion(args) -> int:
    from .external import load_motion, to_trajectory
    motion = load_motion(args.motion)
    traj = to_trajectory(motion, grid=args.grid, stiffness=args.stiffness, substeps=args.substeps,
                         neighbours=args.neighbours)
    traj.save(args.out)
    print(json.dumps({"out": args.out, "frames": traj.frames, "particles": traj.observed, "dt": traj.dt,
                      "substeps_per_frame": traj.frame_every, "state": "estimated from positions"}))
    return 0


def _script_reference(scene: str) -> str:
    """How a trajectory names its scene: the absolute path of a script file (so that data
    can be fitted from any folder), or the name of a built-in scene."""
    from pathlib import Path
    p = Path(scene)
    return str(p.resolve()) if p.is_file() else scene


def _data_and_scene(args, path=None):
    """The trajectory of ``--data`` (or ``path``) and its scene (``--scene`` or the script
    the data names), built with the data's options plus ``--set`` overrides (not yet built)."""
    from .scene import build_scene, parse_options
    from .trajectory import load_trajectory
    data = load_trajectory(args.data if path is None else path)
    options = dict(data.metadata["scene"].get("options") or {})
    options.update(parse_options(args.set))
    scene_path = args.scene or data.metadata["scene"].get("script")
    if not scene_path:
        from .errors import DiffsimError
        raise DiffsimError("the data names no scene script; pass --scene SCENE.py")
    if not args.scene:
        from .errors import DiffsimError, InvalidScene
        from .scene import resolve_script
        try:
            resolve_script(scene_path)
        except InvalidScene:
            raise DiffsimError(f"the data's scene script {scene_path!r} is not found from here; pass "
                               f"--scene SCENE.py") from None
    return data, options, lambda: build_scene(scene_path, options)


def _cmd_fit(args) -> int:
    from .fitting import Fitter
    from .scene import parse_options
    _init_runtime(args)
    data, _, make_scene = _data_and_scene(args)
    scene = make_scene()
    init = {k: float(v) for k, v in parse_options(args.init).items()} if args.init else None
    fitter = Fitter(scene, data, args.params.split(","), body=args.body, init=init)
    out = args.out or f"runs/fit_{scene.name}"
    result = fitter.run(optimizer=args.optimizer, iters=args.iters, lr=args.lr, out=out,
                        resume=args.resume, progress=not args.quiet)
    brief = {k: result[k] for k in ("fitted", "std", "final_loss_mm2", "iterations", "evaluations", "seconds")}
    brief["out"] = out
    print(json.dumps(brief))
    return 0


def _cmd_train_law(args) -> int:
    from .learned.constitutive import make_law
    from .learned.training import LawTrainer, save_law
    from .trajectory import InvalidTrajectory
    from .errors import DiffsimError
    if args.yield_strain is not None or args.pressure_slope is not None:   # before any data is read
        if not args.plastic or args.kind != "potential":
            raise DiffsimError("--yield-strain/--pressure-slope shape the potential law's plastic projection: "
                               "use them with --kind potential --plastic")
        if not (args.yield_strain or 0) > 0 or not (args.pressure_slope is None or args.pressure_slope > 0):
            raise DiffsimError(f"--yield-strain must be > 0 (and --pressure-slope, if given, > 0 with it); got "
                               f"{args.yield_strain}, {args.pressure_slope}")
    world = _init_process_group()   # under torchrun: one process per rank
    if world > 1 and args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // world)
    _init_runtime(args)
    cases = [_data_and_scene(args, path) for path in args.data]   # one scene per trajectory
    for path, (data, _, _) in zip(args.data, cases):
        if not data.full_state and args.window[0] > 0:
            raise InvalidTrajectory(f"{path} has no full state (F, C); record it with "
                                    f"`diffsim generate --full-state` to train with teacher forcing")
    datas = [c[0] for c in cases]
    options = cases[0][1] if len(cases) == 1 else [c[1] for c in cases]
    scenes = [make_scene() for _, _, make_scene in cases]
    import torch
    torch.manual_seed(args.seed)
    el, pl = make_law(args.kind, plastic=args.plastic, width=args.width, depth=args.depth,
                      stress_scale=args.stress_scale, yield_strain=args.yield_strain,
                      pressure_slope=args.pressure_slope)
    trainer = LawTrainer(scenes, datas, el, pl, body=args.body, lr=args.lr, clip=args.clip,
                         window_start=args.window[0] or 1, window_end=args.window[1] or None, seed=args.seed,
                         batch=args.batch)
    hist = trainer.train(args.iters, progress=not args.quiet and trainer.rank == 0)
    if trainer.rank == 0:   # one writer
        save_law(args.out, el, pl, metadata={**trainer.metadata(), "history": hist,
                                              "kind": args.kind, "options": options, "processes": trainer.world})
        print(json.dumps({"out": args.out, "final_loss_mm2": hist[-1]["loss_mm2"], "iterations": len(hist),
                          "seconds": hist[-1]["seconds"], "processes": trainer.world}))
    _leave_process_group(world)
    return 0


def _init_process_group() -> int:
    """Join the torchrun group (gloo on CPU) when started by torchrun; the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
    return world


def _leave_process_group(world: int) -> None:
    """End a torchrun rank: leave the group together (a barrier, so no rank tears down gloo
    while another still writes), then exit at once. Skipping the interpreter's teardown is
    deliberate: with everything written and flushed, a gloo/c10d thread still joinable at
    static destruction aborted the process ('terminate called without an active
    exception', SIGABRT, about 1 run in 10 on a loaded machine) after the work was done."""
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _train_surrogate(args, train, **kwargs) -> int:
    """The body of train-rom and train-neuraldem: join torchrun's group, split the CPU
    threads among its processes, train, print a JSON line (rank 0), leave together."""
    import torch

    from .learned.training import _distributed
    from .scene import parse_options
    world = _init_process_group()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    overrides = parse_options(args.set)   # --set width=96
    model = train(args.dataset, args.out, config=args.config, iterations=args.iters, batch=args.batch, lr=args.lr,
                  checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                  progress=not args.quiet, **kwargs, **overrides)
    if _distributed()[0] == 0:
        hist = model.metadata.get("history") or [{}]
        print(json.dumps({"out": args.out, "parameters": sum(p.numel() for p in model.parameters()),
                          "final_loss": hist[-1].get("loss"), "processes": world}))
    _leave_process_group(world)
    return 0


def _cmd_train_rom(args) -> int:
    from .learned.rom_training import train_rom
    return _train_surrogate(args, train_rom, decoder_iterations=args.decoder_iters, noise=args.noise,
                            horizon=args.horizon, unroll=args.unroll, unroll_from=args.unroll_from)


def _cmd_train_neuraldem(args) -> int:
    from .learned.neuraldem_training import train_neuraldem
    return _train_surrogate(args, train_neuraldem, queries=args.queries, flux_weight=args.flux_weight,
                            order_weight=args.order_weight, flux_units=args.flux_units,
                            mass_weight=args.mass_weight, occupancy_loss=args.occupancy_loss)


def _cmd_ensemble_neuraldem(args) -> int:
    from .learned.neuraldem import NeuralDEMEnsemble
    model = NeuralDEMEnsemble.combine(args.models, args.out)
    print(json.dumps({"out": args.out, "members": len(model.members),
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


def _surrogate_parser(sub, name: str, help: str, iters: int, batch: int, checkpoint_every: int):
    """A train-* parser with the arguments every surrogate's training shares."""
    m = sub.add_parser(name, help=help)
    m.add_argument("dataset", help="the recorded sweep's folder (or its dataset.json)")
    m.add_argument("--out", required=True, help="model file to write (and to resume from)")
    m.add_argument("--config", choices=("small", "paper"), default="small",
                   help="small: minutes on 2 CPU cores; paper: the published size (use a GPU)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry (width=96)")
    m.add_argument("--iters", type=int, default=iters, help="optimiser iterations")
    m.add_argument("--batch", type=int, default=batch,
                   help="samples per iteration (under torchrun shared among the processes)")
    m.add_argument("--lr", type=float, default=1e-3, help="learning rate, decaying to a tenth")
    m.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    m.add_argument("--resume", action="store_true", help="continue from --out")
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--quiet", action="store_true")
    return m


def _window(text):
    a, _, b = text.partition(",")
    return int(a), int(b or 0)


def _runtime_args(p, precision="f32"):
    p.add_argument("--arch", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--precision", choices=("f32", "f64"), default=precision)
    p.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="diffsim", description="Differentiable physics simulation (MPM, FEM, DEM, learned step modules).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scene script and write frames, a preview and summary.json")
    r.add_argument("scene", help="path of a scene script (or the name of a built-in scene)")
    r.add_argument("--steps", type=int, default=None, help="substeps to run (default: the scene's)")
    r.add_argument("--out", default=None, help="output folder (default: runs/SCENE)")
    r.add_argument("--every", type=int, default=None, help="substeps between written frames")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/checkpoint.npz (with its options and --every)")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (refused otherwise)")
    r.add_argument("--deterministic", action="store_true",
                   help="one CPU thread: bitwise reproducible (also across --resume)")
    _runtime_args(r)
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="scene option (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-video", action="store_true", help="skip animation.gif even if imageio is installed")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("scenes", help="list the built-in scenes")
    s.set_defaults(func=_cmd_scenes)

    g = sub.add_parser("generate", help="record a trajectory (positions per frame) from a scene")
    g.add_argument("scene", help="scene script (or built-in scene name)")
    g.add_argument("--out", required=True, help="output .npz")
    g.add_argument("--steps", type=int, default=None, help="substeps (default: the scene's)")
    g.add_argument("--every", type=int, default=None, help="substeps per recorded frame")
    g.add_argument("--subsample", type=float, default=1.0, help="fraction of particles to keep")
    g.add_argument("--noise", type=float, default=0.0,
                   help="position noise std as a fraction of the largest body's size (0.01 = 1%%)")
    g.add_argument("--surface", action="store_true", help="observe surface particles only")
    g.add_argument("--full-state", action="store_true",
                   help="also record F and C (needed for teacher forcing in train-law)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="scene option (repeatable)")
    g.add_argument("--quiet", action="store_true")
    _runtime_args(g)
    g.set_defaults(func=_cmd_generate)

    m = sub.add_parser("import-motion", help="turn another simulator's particle positions (diffsim.external's "
                                             "format) into a full-state trajectory for fit and train-law")
    m.add_argument("motion", help="motion .npz: positions, frame_dt, volume, mass, domain [, walls, gravity]")
    m.add_argument("--out", required=True, help="output trajectory .npz")
    m.add_argument("--grid", type=int, default=24, help="MPM cells along the domain's longest side")
    m.add_argument("--stiffness", type=float, default=1e4,
                   help="order of the material's Young's modulus (Pa): time step and the law's wave speed")
    m.add_argument("--substeps", type=int, default=None, help="substeps per frame (default: from the stiffness)")
    m.add_argument("--neighbours", type=int, default=26, help="neighbours in the local fits of F and C")
    m.set_defaults(func=_cmd_import_motion)

    f = sub.add_parser("fit", help="fit material parameters to a trajectory by gradient descent")
    f.add_argument("--data", required=True, help="trajectory .npz (from diffsim generate or your own)")
    f.add_argument("--scene", default=None, help="scene script (default: the one named in the data)")
    f.add_argument("--params", required=True, help="comma-separated, e.g. E,nu,yield_stress")
    f.add_argument("--body", default=None, help="body whose material is fitted (default: the only one)")
    f.add_argument("--init", action="append", metavar="NAME=VALUE", help="starting value (repeatable)")
    f.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    f.add_argument("--iters", type=int, default=30)
    f.add_argument("--lr", type=float, default=None)
    f.add_argument("--out", default=None, help="output folder (default: runs/fit_SCENE)")
    f.add_argument("--resume", action="store_true", help="continue from OUT/fit_state.pt")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scene option")
    f.add_argument("--quiet", action="store_true")
    _runtime_args(f, precision="f64")
    f.set_defaults(func=_cmd_fit)

    t = sub.add_parser("train-law", help="train a neural constitutive law inside the MPM from one or several trajectories")
    t.add_argument("--data", required=True, nargs="+",
                   help="full-state trajectories (diffsim generate --full-state) of the same material: "
                        "one or several motions (press, shear, twist ...), each with its own scene options")
    t.add_argument("--scene", default=None, help="scene script (default: the one named in the data)")
    t.add_argument("--body", default=None)
    t.add_argument("--kind", choices=("structured", "potential", "mlp"), default="structured",
                   help="structured (equivariant, zero at rest), potential (an isotropic convex energy: "
                        "learns shear from compression) or the unstructured MLP baseline")
    t.add_argument("--plastic", action="store_true", help="also learn a plastic projection")
    t.add_argument("--yield-strain", type=float, default=None,
                   help="potential kind: a learned yield surface for the plastic projection, starting at "
                        "this deviatoric Green strain (e.g. 0.05; no flow inside it, no creep)")
    t.add_argument("--pressure-slope", type=float, default=None,
                   help="with --yield-strain: the radius grows by this times the compression (-tr E), "
                        "learned (a frictional material's cone; ~1 for a 30-degree friction angle)")
    t.add_argument("--width", type=int, default=32)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--stress-scale", type=float, default=1e4, help="output unit of the network (Pa)")
    t.add_argument("--iters", type=int, default=100)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    t.add_argument("--window", type=_window, default=(2, 0),
                   help="teacher-forcing window in frames: START,END (END default: all)")
    t.add_argument("--batch", type=int, default=None,
                   help="windows per iteration (default: one per trajectory; under torchrun shared among "
                        "the processes)")
    t.add_argument("--out", default="law.pt")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scene option")
    t.add_argument("--quiet", action="store_true")
    _runtime_args(t, precision="f64")
    t.set_defaults(func=_cmd_train_law)

    m = _surrogate_parser(sub, "train-rom", "train a GIOROM surrogate on a recorded sweep (diffsim sweep --record)",
                          iters=2000, batch=8, checkpoint_every=200)
    m.add_argument("--decoder-iters", type=int, default=100)
    m.add_argument("--noise", type=float, default=2e-5, help="random-walk noise of the velocity window (m/frame)")
    m.add_argument("--horizon", type=int, default=100, help="frames per trajectory used for training")
    m.add_argument("--unroll", type=int, default=4,
                   help="from --unroll-from of the iterations on, train on rollouts of this many frames")
    m.add_argument("--unroll-from", type=float, default=0.5)
    m.set_defaults(func=_cmd_train_rom)

    m = _surrogate_parser(sub, "train-neuraldem",
                          "train a NeuralDEM surrogate on a recorded hopper sweep (scenes/dem_hopper.py)",
                          iters=3000, batch=16, checkpoint_every=250)
    m.add_argument("--queries", type=int, default=512, help="field nodes per (run, frame) sample")
    m.add_argument("--flux-weight", type=float, default=1.0, help="weight of the loss on the flux through the slot")
    m.add_argument("--flux-units", choices=("run", "dataset"), default="run",
                   help="the flux error in units of each run's typical flux (relative, as rates are read) or "
                        "of the dataset's")
    m.add_argument("--order-weight", type=float, default=0.1,
                   help="weight of the loss on the exit-order ratio (the flow regime)")
    m.add_argument("--mass-weight", type=float, default=0.0,
                   help="weight of the loss on the mass inside (its fraction of the run's mass)")
    m.add_argument("--occupancy-loss", choices=("mse", "kl"), default="kl",
                   help="the occupancy's error: squared, or the KL divergence of its fraction of the ceiling "
                        "(pushes a faint haze over empty nodes down)")
    m.set_defaults(func=_cmd_train_neuraldem)
    e = sub.add_parser("ensemble-neuraldem",
                       help="combine NeuralDEMs trained alike (other --seed) into one model file: their mean fields")
    e.add_argument("models", nargs="+", help="model files of train-neuraldem, trained on the same dataset")
    e.add_argument("--out", required=True, help="the ensemble's model file")
    e.set_defaults(func=_cmd_ensemble_neuraldem)

    s = sub.add_parser("sweep", help="run a scene over a grid / random sample of options (Ray or serial)")
    s.add_argument("scene", help="scene script (or built-in scene name)")
    s.add_argument("--out", required=True, help="the sweep's folder (manifest.jsonl, summary.csv, runs/)")
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", help="options on a grid (repeatable)")
    s.add_argument("--random", action="append", metavar="KEY=LO:HI", help="uniform random option (repeatable)")
    s.add_argument("--samples", type=int, default=1, help="random draws per grid point")
    s.add_argument("--seeds", default="0", help="comma-separated run seeds (default 0)")
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--every", type=int, default=None)
    s.add_argument("--backend", choices=("ray", "serial"), default="ray")
    s.add_argument("--workers", type=int, default=None, help="local Ray CPUs (default: all cores)")
    s.add_argument("--address", default=None, help="join a Ray cluster (auto: the one running on this machine, or HOST:PORT); "
                        "default: start a local instance")
    s.add_argument("--threads-per-run", type=int, default=1, help="CPU threads (and Ray CPUs) per run")
    s.add_argument("--gpus-per-run", type=float, default=0)
    s.add_argument("--retries", type=int, default=2, help="further attempts for a failed run")
    s.add_argument("--precision", choices=("f32", "f64"), default="f32")
    s.add_argument("--deterministic", action="store_true", help="one thread per run: bitwise-reproducible runs")
    s.add_argument("--plot", action="append", metavar="OPTION:OUTPUT",
                   help="after the sweep, plot a summary scalar or last trace value against an option (repeatable)")
    s.add_argument("--record", action="store_true",
                   help="a dataset: each run records its trajectory; OUT/dataset.json indexes them with splits")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_sweep)

    o = sub.add_parser("optimize", help="optimise a manipulation task's controls (gradients, CMA-ES or PPO)")
    o.add_argument("task", help="task name (see `diffsim tasks`) or task script")
    o.add_argument("--method", choices=("grad", "cmaes", "ppo"), default="grad")
    o.add_argument("--budget", type=int, default=50, help="simulated rollouts at most")
    o.add_argument("--out", default=None, help="result JSON (default runs/optimize/TASK_METHOD.json)")
    o.add_argument("--set", action="append", metavar="KEY=VALUE", help="task option (repeatable)")
    o.add_argument("--lr", type=float, default=0.1, help="grad: Adam step size (units of the controls)")
    o.add_argument("--sigma", type=float, default=0.015, help="cmaes: initial step, a fraction of the controls' bound")
    o.add_argument("--popsize", type=int, default=20, help="cmaes: population")
    o.add_argument("--no-stop", action="store_true", help="spend the whole budget even after a success")
    o.add_argument("--quiet", action="store_true")
    _runtime_args(o)
    o.set_defaults(func=_cmd_optimize)

    tl = sub.add_parser("tasks", help="list the built-in manipulation tasks")
    tl.set_defaults(func=_cmd_tasks)

    args = p.parse_args(argv)
    return _dispatch(args)


def _cmd_tasks(args) -> int:
    from .scene import load_script, resolve_script
    from .tasks import list_tasks
    for name in list_tasks():
        doc = (load_script(resolve_script(f"task_{name}")).__doc__ or "").strip()
        print(f"  {name}")
        print(textwrap.indent(textwrap.fill(doc.partition("\n\n")[0], 88), "      "))
        print()
    return 0


def _cmd_optimize(args) -> int:
    from pathlib import Path
    from .scene import parse_options
    from .tasks import load_task, optimize, write_result

    _init_runtime(args)
    task = load_task(args.task, parse_options(args.set))
    out = Path(args.out or f"runs/optimize/{task.name}_{args.method}.json")
    result = optimize(task, args.method, budget=args.budget, lr=args.lr, seed=args.seed, sigma=args.sigma,
                      popsize=args.popsize, progress=not args.quiet, stop_at_success=not args.no_stop)
    write_result(result, out)
    print(json.dumps({k: result[k] for k in ("task", "method", "success", "rollouts", "wall_s", "best_loss")}
                     | {"out": str(out)}))
    return 0 if result["success"] else 1


def _cmd_sweep(args) -> int:
    from .errors import InvalidScene
    from .scene import _parse_value
    from .sweep import sweep

    def pairs(items, sep):
        out = {}
        for item in items or []:
            key, eq, rest = item.partition("=")
            if not eq or not rest:
                raise InvalidScene(f"expected KEY=VALUES, got {item!r}")
            out[key.strip()] = rest
        return out
    grid = {k: [_parse_value(x.strip()) for x in v.split(",")] for k, v in pairs(args.grid, ",").items()}
    random = {}
    for k, v in pairs(args.random, ":").items():
        lo, colon, hi = v.partition(":")
        try:
            random[k] = (float(lo), float(hi))
        except ValueError:
            raise InvalidScene(f"--random {k}: expected LO:HI numbers, got {v!r}") from None
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise InvalidScene(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    rows = sweep(args.scene, args.out, grid=grid, random=random, samples=args.samples, seeds=seeds, steps=args.steps,
                 every=args.every, backend=args.backend, workers=args.workers, address=args.address,
                 threads=args.threads_per_run, gpus_per_run=args.gpus_per_run, retries=args.retries,
                 precision=args.precision, deterministic=args.deterministic, record=args.record,
                 progress=not args.quiet)
    from .sweep import plot
    for spec in args.plot or []:
        x, colon, y = spec.partition(":")
        if not colon:
            raise InvalidScene(f"--plot expects OPTION:OUTPUT, got {spec!r}")
        plot(args.out, x, y)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(json.dumps({"out": args.out, "runs": len(rows), **counts}))
    return 0 if counts.get("completed", 0) == len(rows) else 1


def _dispatch(args) -> int:
    """Run the command; every failure the user can act on becomes one line on stderr
    (exit 2; 130 when interrupted) instead of a traceback."""
    import signal
    from .errors import DiffsimError, RunInterrupted, SweepInterrupted

    def _terminate(signum, frame):  # SIGTERM stops a run like Ctrl-C (summary, checkpoint kept)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a worker): leave SIGTERM alone
        pass
    try:
        return args.func(args)
    except SweepInterrupted as exc:
        print(f"diffsim: {exc}", file=sys.stderr)
        return 130
    except RunInterrupted as exc:
        print(f"diffsim: {exc}; continue with: {_resume_command()}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("diffsim: interrupted", file=sys.stderr)
        return 130
    except DiffsimError as exc:
        print(f"diffsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing files, read-only output folders, full disks
        what = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"diffsim: error: {what}{where}", file=sys.stderr)
        return 2


def _resume_command() -> str:
    """The command line of this process with ``--resume`` added (how to continue a run)."""
    import shlex
    argv = ["diffsim"] + [a for a in sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join(shlex.quote(a) for a in argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
