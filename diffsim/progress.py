"""Progress bars for simulation, fitting and training loops: tqdm, with the one call the
loops use (``update(n, **values)`` shows the latest values after the bar).

>>> with Progress(total=2000, desc="elastic_drop", unit="step") as bar:  # doctest: +SKIP
...     for i in range(2000):
...         step()
...         bar.update(1, energy=e)

On a terminal tqdm redraws one line (at most every 0.1 s); on anything else (CI logs,
files, pipes) it redraws at most every 5 s, so logs stay short. Output goes to stderr
unless ``stream`` is given.
"""
from __future__ import annotations

import numbers
import sys
from typing import Any, TextIO

__all__ = ["Progress"]


def _fmt_value(v: Any) -> str:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "size", 2) in (1, None):
        v = v.item()  # numpy / torch scalars
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return str(v)
    return str(int(v)) if isinstance(v, numbers.Integral) else f"{float(v):.4g}"


class Progress:
    """A tqdm bar: count/total, percentage, rate, elapsed time and ETA.

    Args:
        total: expected number of units (None: unknown; no percentage/ETA).
        desc: label printed first, e.g. the scene name.
        unit: unit name for counts and rates ("step", "frame", "iter").
        stream: text stream to write to (default: ``sys.stderr`` at construction time).
        disable: print nothing (counting still works).
        interval: minimum seconds between redraws; default 0.1 on a terminal, 5.0 otherwise.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", stream: TextIO | None = None,
                 disable: bool = False, interval: float | None = None):
        from tqdm import tqdm
        stream = stream if stream is not None else sys.stderr
        try:
            tty = bool(stream.isatty())
        except Exception:
            tty = False
        self.postfix: dict[str, str] = {}
        self._n = 0
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, disable=bool(disable),
                         mininterval=interval if interval is not None else (0.1 if tty else 5.0),
                         dynamic_ncols=tty, ascii=not tty, leave=True)

    @property
    def n(self):
        """Units done so far (counted also when disabled)."""
        return self._n

    @property
    def elapsed(self) -> float:
        """Seconds since the bar started."""
        return float(self._bar.format_dict["elapsed"])

    def update(self, n: float = 1, **values: Any) -> None:
        """Advance by ``n`` units; ``values`` (e.g. ``loss=0.12``) are shown after the bar."""
        if values:
            self.postfix.update({k: _fmt_value(v) for k, v in values.items()})
            self._bar.set_postfix(self.postfix, refresh=False)
        self._n += n
        self._bar.update(n)

    def write(self, message: str) -> None:
        """Print a message line without garbling the bar."""
        if not self._bar.disable:
            self._bar.write(message.rstrip("\n"), file=self._bar.fp)

    def close(self) -> None:
        """Print the final state of the bar. Idempotent."""
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
