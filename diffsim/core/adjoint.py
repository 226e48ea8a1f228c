"""The one adjoint core: every Taichi system's differentiable rollout is a chain of segments.

A *segment* is a run of substeps that is one torch autograd Function
(:func:`segment`). Its forward pass loads the segment's inputs (state, parameters,
controls: tensors) into the system's fields, runs the substeps and, when gradients are
wanted, writes what each substep's reverse pass needs to a *tape*; the torch graph keeps
only the segment's inputs. Its backward pass finds the tape (or, if a later segment took
it, runs the segment again to refill it), seeds the output adjoints, reverses the
substeps one by one and returns the inputs' adjoints. Tapes are kept in one
:class:`TapeCache` per system, as many as fit a memory budget (``tape_memory`` of
:func:`diffsim.rollout`), least recently written evicted first: checkpoint-and-recompute
under a budget.

A system supplies only hooks (:class:`SegmentHooks`): load inputs, run the substeps
(taping), read outputs, seed output adjoints, reverse one substep, read input adjoints,
and name a non-finite adjoint. The MPM, FEM, DEM and the FEM-MPM coupling (a composition
of the FEM's and the MPM's hooks with the contact term between them) all go through
here; torch step modules differentiate with torch autograd itself
(:mod:`diffsim.core.step_module`).
"""
from __future__ import annotations

import itertools
import math

import torch

from .. import adjoint_health

DEFAULT_TAPE_MEMORY = 2 ** 30  # bytes of segment tapes kept between forward and backward

_owners = itertools.count(1)


class Tape:
    """Base of a tape: ``owner`` is the id of the segment whose substeps it holds (None:
    free). Subclasses (or the solver's own fields behind them) hold the data."""

    owner = None


class TapeCache:
    """The tapes of one system, within a memory budget (bytes). ``acquire(key, nbytes,
    make)`` returns a tape for a new owner: a free one, a new one from ``make() -> (tape,
    release)`` while the budget allows, else the least recently acquired one (its segment
    will be recomputed). Tapes of another ``key`` (shape) are released first.
    ``nbytes=None``: the tape is the system's own fields, of which there is one."""

    def __init__(self, budget: int = DEFAULT_TAPE_MEMORY):
        self.slots = []          # [tape, release]
        self.key = None
        self.budget = int(budget)

    def acquire(self, key, nbytes: int, make) -> Tape:
        if self.slots and self.key != key:
            self.close()
        self.key = key
        limit = 1 if nbytes is None else max(1, self.budget // max(1, int(nbytes)))
        free = [s for s in self.slots if s[0].owner is None]
        while len(self.slots) > limit and len(free) > 1:   # the budget shrank: release free tapes
            slot = free.pop()
            self.slots.remove(slot)
            if slot[1] is not None:
                slot[1]()
        if free:
            slot = free[0]
        elif len(self.slots) < limit:
            slot = list(make())
            self.slots.append(slot)
        else:
            slot = min(self.slots, key=lambda s: s[0].owner)
        slot[0].owner = next(_owners)
        return slot[0]

    def find(self, owner):
        """The tape still holding segment ``owner``'s substeps, or None."""
        if owner is None:
            return None
        for tape, _ in self.slots:
            if tape.owner == owner:
                return tape
        return None

    def close(self):
        """Release every tape (e.g. when the system is rebuilt)."""
        for tape, release in self.slots:
            tape.owner = None
            if release is not None:
                release()
        self.slots = []
        self.key = None


def tape_cache(system) -> TapeCache:
    """The system's :class:`TapeCache` (created on first use)."""
    if getattr(system, "_tapes", None) is None:
        system._tapes = TapeCache()
    return system._tapes


class SegmentHooks:
    """What a system supplies to the adjoint core; one object per rollout. ``seg`` is the
    system's own description of one segment (its substeps ``seg.steps``, the first one's
    index ``seg.start``, schedules); hooks may keep per-segment accumulators on it."""

    check = True           # test input adjoints for NaN/inf after each segment

    def acquire(self, seg) -> Tape:
        """A tape for ``seg`` (default: from the system's :class:`TapeCache` by
        :meth:`tape_spec`)."""
        return self.cache.acquire(*self.tape_spec(seg))

    def find(self, owner):
        return self.cache.find(owner)

    def tape_spec(self, seg):
        """``(key, nbytes, make)`` of a tape for ``seg``."""
        raise NotImplementedError

    def load(self, seg, inputs):
        """The segment's input tensors into the fields."""
        raise NotImplementedError

    def run(self, seg, tape, inputs):
        """The segment's substeps from the loaded inputs; ``tape`` (or None) records them."""
        raise NotImplementedError

    def outputs(self, seg, inputs) -> tuple:
        """The segment's output tensors, read after :meth:`run`."""
        raise NotImplementedError

    def reload(self, seg, inputs):
        """Before the reverse pass when the tape survived: inputs the reverse pass reads
        from the fields that later segments may have overwritten (e.g. parameters)."""

    def seed(self, seg, tape, grads):
        """The output adjoints (None: zero) into the fields."""
        raise NotImplementedError

    def reverse(self, seg, tape, k, inputs):
        """Reverse substep ``k`` of the segment (0 <= k < seg.steps), in the fields."""
        raise NotImplementedError

    def input_grads(self, seg, tape, inputs) -> tuple:
        """The inputs' adjoints (None where not differentiable), after every reverse."""
        raise NotImplementedError

    def locate(self, seg, tape, grads, inputs):
        """Called when an input adjoint is not finite: raise
        :class:`~diffsim.GradientNotFinite` naming the substep, stage and particle."""
        from ..errors import GradientNotFinite
        raise GradientNotFinite(seg.start, "segment", "an input adjoint")


class _Segment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hooks, seg, *inputs):
        hooks.load(seg, inputs)
        tape = hooks.acquire(seg) if any(ctx.needs_input_grad) else None
        hooks.run(seg, tape, inputs)
        ctx.hooks, ctx.seg = hooks, seg
        ctx.tape_id = tape.owner if tape is not None else None
        ctx.save_for_backward(*inputs)
        return tuple(hooks.outputs(seg, inputs))

    @staticmethod
    def backward(ctx, *grads):
        hooks, seg = ctx.hooks, ctx.seg
        inputs = ctx.saved_tensors
        tape = hooks.find(ctx.tape_id)
        if tape is None:                      # a later segment took the tape: re-run
            hooks.load(seg, inputs)
            tape = hooks.acquire(seg)
            hooks.run(seg, tape, inputs)
        else:
            hooks.reload(seg, inputs)
        try:
            hooks.seed(seg, tape, grads)
            for k in reversed(range(seg.steps)):
                hooks.reverse(seg, tape, k, inputs)
            out = tuple(hooks.input_grads(seg, tape, inputs))
            if hooks.check and not adjoint_health.all_finite(*[g for g in out if g is not None]):
                hooks.locate(seg, tape, grads, inputs)
        finally:
            tape.owner = None                 # this segment is done: its tape is free
        return (None, None) + out


def segment(hooks: SegmentHooks, seg, *inputs) -> tuple:
    """One differentiable segment (see the module docstring): ``inputs`` -> the tensors
    of ``hooks.outputs``."""
    return _Segment.apply(hooks, seg, *inputs)


def cuts(steps: int, every: int | None = None, record_every: int | None = None) -> list:
    """Segment boundaries ``[0, ..., steps]``: every ``every`` substeps (default
    ~sqrt(steps); 0: one segment) and at every record."""
    K = every if every else (steps if every == 0 else max(1, int(math.ceil(math.sqrt(steps)))))
    out = set(range(0, steps, K)) | {steps}
    if record_every:
        out |= set(range(0, steps, int(record_every)))
    return sorted(out)
