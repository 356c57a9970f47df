"""Progress of long loops: a bar with rate and ETA on a terminal, plain lines otherwise.

CI logs and cron mail get one line every ``log_every`` updates (or every ``log_every_s``
seconds when that is not set) and one at the end, instead of a bar's carriage returns.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(
        self,
        desc: str,
        total: int,
        *,
        done: int = 0,
        unit: str = "step",
        bar: bool | None = None,
        log_every: int | None = None,
        log_every_s: float = 30.0,
    ) -> None:
        """``bar=None``: a bar when stderr is a terminal."""
        self.desc, self.total, self.done, self.unit = desc, total, done, unit
        self.log_every, self.log_every_s = log_every, log_every_s
        self._start_done = done
        self._started = self._logged = time.monotonic()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = tqdm(desc=desc, total=total, unit=unit) if use_bar else None
        if self._bar is not None and done:
            self._bar.update(done)

    def update(self, n: int = 1, status: str = "") -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if status:
                self._bar.set_description(f"{self.desc} {status}")
        elif self._line_due():
            self._logged = time.monotonic()
            print(self.line(status), flush=True)

    def _line_due(self) -> bool:
        if self.done >= self.total:
            return True
        if self.log_every is not None:
            return self.done % self.log_every == 0
        return time.monotonic() - self._logged >= self.log_every_s

    def line(self, status: str = "") -> str:
        elapsed = time.monotonic() - self._started
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        percent = 100 * self.done / max(self.total, 1)
        extra = f" {status}" if status else ""
        return (
            f"[{self.desc}] {self.unit} {self.done}/{self.total} ({percent:.0f}%){extra}, "
            f"{rate:.3g} {self.unit}/s, ETA {eta}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
