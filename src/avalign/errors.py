"""The project's own error types: every bad input raises one of these with a message that says what to fix."""


class AvalignError(Exception):
    """Base class for errors raised on purpose by avalign."""


class ConfigError(AvalignError, ValueError):
    """An option or combination of options is invalid (unknown objective, bad range, ...)."""


class DataError(AvalignError, ValueError):
    """Input data is unusable. The message names the file, the row (1-based line) and the field where known."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None, field: str | None = None):
        where = ", ".join(
            part
            for part in (
                f"file {path}" if path is not None else None,
                f"row {row}" if row is not None else None,
                f"field '{field}'" if field is not None else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.field = path, row, field


class TrainingDivergedError(AvalignError, RuntimeError):
    """The loss became NaN or infinite; raised with the global step instead of training on."""
