"""Watching training live: scalars (losses, valid metrics, learning rate, expert load, throughput) to a CSV file
or to TensorBoard (``train.logger``), in ``RUN/logs/<stage>-<time>/``, outside the stage folder that is swapped in
at the end, so a watcher keeps its path for the whole run.

``csv`` (the default) appends ``step,name,value,seconds`` rows to ``scalars.csv`` and flushes each one, so
``tail -f`` or a pandas reader sees them as they come; ``tensorboard`` writes event files through
``torch.utils.tensorboard`` (the ``tensorboard`` extra) for ``tensorboard --logdir RUN/logs``; ``none`` writes
nothing.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from onerec.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "none")


class ScalarLogger:
    """The ``none`` logger and the interface of the others: :meth:`scalar` and :meth:`close`."""

    folder: Path | None = None

    def scalar(self, name: str, value: float, step: int) -> None:
        """Record ``name`` = ``value`` at training step ``step``."""

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Record every finite number of ``values`` (non-numbers are skipped) under ``prefix + key``."""
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.scalar(prefix + key, float(value), step)

    def close(self) -> None:
        """Flush and release the log's files."""

    def watch_hint(self) -> str | None:
        """How to watch the log while it is written (a command), or None."""
        return None


class CSVLogger(ScalarLogger):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "scalars.csv"
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value", "seconds"])
        self._t0 = time.perf_counter()

    def scalar(self, name: str, value: float, step: int) -> None:
        self._writer.writerow([step, name, f"{value:.6g}", f"{time.perf_counter() - self._t0:.2f}"])
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def watch_hint(self) -> str:
        return f"tail -f {self.path}"


class TensorBoardLogger(ScalarLogger):
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.logger=tensorboard needs the tensorboard package. Fix: pip install "
                              "'onerec[tensorboard]', or set train.logger=csv") from None
        self.folder = folder
        self._writer = SummaryWriter(log_dir=str(folder))

    def scalar(self, name: str, value: float, step: int) -> None:
        self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()

    def watch_hint(self) -> str:
        return f"tensorboard --logdir {self.folder.parent}"


def make_logger(kind: str, run: Path | None, stage: str = "train") -> ScalarLogger:
    """The ``kind`` logger (:data:`LOGGERS`) writing to ``run/logs/<stage>-<YYYYmmdd-HHMMSS>/`` (a new folder per
    call, so that runs and resumed parts sit side by side); the ``none`` logger when ``run`` is None."""
    if kind not in LOGGERS:
        raise ConfigError(f"train.logger={kind!r} is not one of {', '.join(LOGGERS)}")
    if kind == "none" or run is None:
        return ScalarLogger()
    folder = Path(run) / "logs" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while folder.exists():  # two calls in one second
        n += 1
        folder = folder.with_name(f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    return CSVLogger(folder) if kind == "csv" else TensorBoardLogger(folder)
