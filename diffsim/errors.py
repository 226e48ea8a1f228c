"""Exceptions raised by diffsim. Each message says what to change."""


class DiffsimError(Exception):
    """Base class of every diffsim error."""


class InvalidMaterial(DiffsimError, ValueError):
    """A material parameter is out of its physical range."""


class InvalidMesh(DiffsimError, ValueError):
    """A mesh is unusable (not watertight, degenerate, wrong units, ...)."""


class InvalidScene(DiffsimError, ValueError):
    """A scene is inconsistent (particles outside the domain, bad options, ...)."""


class UnstableTimeStep(DiffsimError, ValueError):
    """The time step exceeds the solver's stability limit."""

    def __init__(self, message, dt=None, limit=None):
        super().__init__(message)
        self.dt = dt
        self.limit = limit


class SimulationDiverged(DiffsimError, RuntimeError):
    """The state became NaN/inf or the energy exploded during a run."""

    def __init__(self, step, field, cause, body=None):
        where = f" in body {body!r}" if body is not None else ""
        super().__init__(f"simulation diverged at step {step}{where}: {field}: {cause}")
        self.step = step
        self.field = field
        self.cause = cause
        self.body = body


class RuntimeNotInitialized(DiffsimError, RuntimeError):
    """diffsim.init() was called with settings that conflict with an earlier call."""


class GradientNotFinite(DiffsimError, FloatingPointError):
    """A backward pass produced NaN/inf. Names the substep (counted from the start of the
    rollout), the stage of the reverse pass (``loss``, ``G2P``, ``contact``, ``collider``,
    ``grid``, ``P2G``, ``material``, ...) and the particle, node or sphere where it first
    appeared."""

    def __init__(self, step, stage, where, detail=""):
        msg = f"gradient not finite (NaN/inf) at substep {step}, stage {stage}: {where}"
        super().__init__(msg + (f"; {detail}" if detail else ""))
        self.step = step
        self.stage = stage
        self.where = where


class SweepInterrupted(DiffsimError, KeyboardInterrupt):
    """A sweep was stopped by Ctrl-C or SIGTERM; its manifest is consistent and the same
    command continues it (completed runs are skipped)."""

    def __init__(self, completed, total, out):
        super().__init__(f"sweep interrupted with {completed} of {total} runs completed; the manifest in {out} "
                         f"is consistent: run the same command again to continue")
        self.completed, self.total, self.out = completed, total, out


class RunInterrupted(DiffsimError, KeyboardInterrupt):
    """A run was stopped by Ctrl-C or SIGTERM; its summary says ``interrupted`` and
    ``checkpoint_step`` is the step ``--resume`` continues from (None: no checkpoint yet)."""

    def __init__(self, step, checkpoint_step, out):
        saved = (f"the checkpoint holds step {checkpoint_step}" if checkpoint_step is not None
                 else "no checkpoint was written yet")
        super().__init__(f"interrupted at step {step}; {saved} in {out}")
        self.step = step
        self.checkpoint_step = checkpoint_step
        self.out = out
