"""One error type per kind of user mistake, each with a message that names the fix."""

from __future__ import annotations


class OneRecError(Exception):
    """Base class: an error caused by input, config or files, reported without a traceback."""


class DataError(OneRecError):
    """Bad input data. The message names the file, the row or column, and the fix."""

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        msg = (": ".join([", ".join(where), problem]) if where else problem).rstrip(".") + "."
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)
        self.path, self.row, self.column, self.fix = path, row, column, fix


class ConfigError(OneRecError):
    """A config key or value that does not exist or does not parse."""


class CheckpointError(OneRecError):
    """A checkpoint that is missing, truncated, or made for another config."""


class DistributedError(OneRecError):
    """A process of a multi-process job (torchrun) lost the others: one of them died or the network failed."""
