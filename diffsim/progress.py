"""A dependency-free progress bar for simulation loops.

>>> with Progress(total=2000, desc="elastic_drop", unit="step") as bar:  # doctest: +SKIP
...     for i in range(2000):
...         step()
...         bar.update(1, energy=e)

On a terminal it redraws one line with ``'\\r'`` (at most every 0.1 s); on anything else
(CI logs, files, pipes) it prints a plain line at most every ~5 s and one at the end, so
logs stay short. Output goes to stderr unless ``stream`` is given.
"""
from __future__ import annotations

import numbers
import shutil
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float | None, precise: bool = False) -> str:
    """``75.3 -> "01:15"``, ``3725 -> "1:02:05"``; ``"--:--"`` for unknown (None/inf/nan).

    With ``precise=True`` durations under a minute keep a decimal: ``2.34 -> "2.3s"``.
    """
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "--:--"
    if precise and seconds < 59.95:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return f"{float(v):.4g}"
    if hasattr(v, "item") and callable(v.item) and getattr(v, "size", 2) == 1:
        try:
            return _fmt_value(v.item())  # numpy / torch scalars
        except Exception:  # pragma: no cover
            pass
    return str(v)


def _fmt_rate(rate: float, unit: str) -> str:
    if rate <= 0 or rate != rate:
        return f"? {unit}/s"
    if rate >= 100:
        return f"{rate:.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.2f} {unit}/s"
    return f"{1.0 / rate:.2f} s/{unit}"


class Progress:
    """Progress bar: count/total, percentage, rate, elapsed time and ETA.

    Args:
        total: expected number of units (None: unknown; no percentage/ETA).
        desc: label printed first, e.g. the scene name.
        unit: unit name for counts and rates ("step", "frame", "epoch").
        stream: text stream to write to (default: ``sys.stderr`` at construction time).
        disable: print nothing (counting and timing still work).
        tty: force terminal (``True``: redraw one line with ``'\\r'``) or log mode
            (``False``: plain lines); default ``stream.isatty()``.
        interval: minimum seconds between redraws; default 0.1 on a terminal, 5.0 otherwise.
        clock: zero-argument function returning seconds (default ``time.perf_counter``;
            tests pass a fake clock).

    Attributes:
        n: units done so far (int, or float if fractional updates were given).
        total, desc, unit: as given.
        postfix: dict of the latest ``key=value`` pairs passed to :meth:`update`.

    Use as a context manager (closes on exit, also on an exception) or call :meth:`close`.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 stream: TextIO | None = None, disable: bool = False, tty: bool | None = None,
                 interval: float | None = None, clock=None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.disable = bool(disable)
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except Exception:
                tty = False
        self.tty = tty
        self.interval = float(interval) if interval is not None else (0.1 if tty else 5.0)
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self._clock = clock if clock is not None else time.perf_counter
        self._start = self._clock()
        self._end: float | None = None
        self._last_print = self._start
        self._last_len = 0

    # ------------------------------------------------------------------ state
    @property
    def elapsed(self) -> float:
        """Seconds since construction (frozen at :meth:`close`)."""
        end = self._end if self._end is not None else self._clock()
        return end - self._start

    @property
    def rate(self) -> float:
        """Average units per second so far (0 before any time has passed)."""
        el = self.elapsed
        return self.n / el if el > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Estimated seconds left (None when total or rate are unknown)."""
        if self.total is None:
            return None
        r = self.rate
        if r <= 0:
            return None
        return max(self.total - self.n, 0) / r

    # ------------------------------------------------------------------ API
    def update(self, n: float = 1, **postfix: Any) -> None:
        """Advance by ``n`` units; ``postfix`` key/values (e.g. ``loss=0.12``) are shown at the end."""
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self.disable or self.closed:
            return
        now = self._clock()
        if now - self._last_print >= self.interval:
            self._last_print = now
            self._emit(final=False)

    def set_postfix(self, **postfix: Any) -> None:
        """Replace the shown key/values without advancing."""
        self.postfix = dict(postfix)

    def write(self, message: str) -> None:
        """Print a message line without garbling the bar (clears the bar line on a terminal)."""
        if self.disable:
            return
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(message.rstrip("\n") + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Stop the clock and print the final line (with the total elapsed time). Idempotent."""
        if self.closed:
            return
        self._end = self._clock()
        self.closed = True
        if not self.disable:
            self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Progress({self.format_line()!r})"

    # ------------------------------------------------------------------ formatting
    def format_line(self, final: bool = False, bar_width: int | None = None) -> str:
        """The status text, e.g. ``"drop:  45%|####      | 450/1000 step [00:12<00:14, 37.50 step/s, e=0.1]"``.

        Without a bar (``bar_width`` None/0) it reads
        ``"drop: 450/1000 step (45.0%) 37.50 step/s elapsed 00:12 eta 00:14 e=0.1"``.
        ``final=True`` gives ``"... done in 00:26"`` instead of the ETA.
        """
        n = self.n
        n_txt = f"{n:g}" if isinstance(n, float) else str(n)
        parts = []
        head = f"{self.desc}: " if self.desc else ""
        rate_txt = _fmt_rate(self.rate, self.unit)
        el = format_duration(self.elapsed)
        post = ", ".join(f"{k}={_fmt_value(v)}" for k, v in self.postfix.items())
        if self.total:
            frac = n / self.total
            count = f"{n_txt}/{self.total} {self.unit}"
        else:
            frac = None
            count = f"{n_txt} {self.unit}"
        if bar_width and frac is not None:
            filled = int(round(min(max(frac, 0.0), 1.0) * bar_width))
            bar = "#" * filled + " " * (bar_width - filled)
            tail = f"done in {format_duration(self.elapsed, precise=True)}" if final else f"{el}<{format_duration(self.eta)}"
            inner = ", ".join(x for x in (tail, rate_txt, post) if x)
            return f"{head}{100 * frac:3.0f}%|{bar}| {count} [{inner}]"
        parts.append(count)
        if frac is not None:
            parts.append(f"({100 * frac:.1f}%)")
        parts.append(rate_txt)
        if final:
            parts.append(f"done in {format_duration(self.elapsed, precise=True)}")
        else:
            parts.append(f"elapsed {el}")
            if frac is not None:
                parts.append(f"eta {format_duration(self.eta)}")
        if post:
            parts.append(post)
        return head + " ".join(parts)

    def _emit(self, final: bool) -> None:
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            line = self.format_line(final=final, bar_width=20)
            if len(line) > cols - 1:
                line = self.format_line(final=final, bar_width=0)[: max(cols - 1, 10)]
            pad = " " * max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
            self._last_len = 0 if final else len(line)
        else:
            self.stream.write(self.format_line(final=final) + "\n")
        self.stream.flush()
