"""Errors raised by ledgerflow, rooted at :class:`LedgerflowError`.

They live in the lowest layer so that every layer can raise and catch them.
Context rides on attributes as well as in the message.
"""

from __future__ import annotations


class LedgerflowError(Exception):
    """Base class of every error that ledgerflow raises on purpose."""

    #: Exit status the command line uses for this error.
    exit_code: int = 1

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Subclasses take keyword-only context, which the default pickling
        # (cls(*args)) loses; Ray pickles errors raised in tasks and actors.
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(cls: type[LedgerflowError], args: tuple[object, ...], state: dict[str, object]) -> LedgerflowError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class UsageError(LedgerflowError):
    """Raised when the caller passed an invalid value (the caller's fault)."""

    exit_code = 2


class InvalidStreamIdError(UsageError):
    """Raised when a stream or run id does not match the allowed pattern."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(
            f"invalid run id {stream_id!r}: use 1 to 64 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
        self.stream_id = stream_id


class StoreError(LedgerflowError):
    """Raised when the event store cannot be opened, read or written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class LogNotFoundError(StoreError):
    """Raised when a command that only reads finds no log at the given path."""

    exit_code = 2


class NotALogError(StoreError):
    """Raised when a file exists but is not a ledgerflow event log."""

    exit_code = 2


class LogFormatError(StoreError):
    """Raised when a log was written by a newer format version than this one reads."""

    exit_code = 2


class ConcurrencyError(LedgerflowError):
    """Raised when an append's ``expected_version`` is not the stream's head.

    Nothing of the rejected batch was written.
    """

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, not the expected "
            f"{expected_version}: another writer appended first; reread the stream and retry"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class EventDecodeError(StoreError):
    """Raised when a stored event cannot be turned back into its model."""

    def __init__(
        self, message: str, *, path: str | None, stream_id: str, seq: int, event_type: str
    ) -> None:
        super().__init__(message, path=path)
        self.stream_id = stream_id
        self.seq = seq
        self.event_type = event_type


class UnknownEventTypeError(EventDecodeError):
    """Raised when a stored event's type is not registered in this version of ledgerflow."""


class PayloadValidationError(EventDecodeError):
    """Raised when a stored payload does not validate against its event model."""


class TamperedLogError(LedgerflowError):
    """Raised when a stream's hash chain does not verify.

    Attributes name the first bad ``seq`` and the reason (``hash mismatch``,
    ``gap``, ``truncated tail``, ``head mismatch``, ``wrong key``).
    """

    exit_code = 5

    def __init__(self, message: str, *, stream_id: str, seq: int | None, reason: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.seq = seq
        self.reason = reason


class RunNotFoundError(UsageError):
    """Raised when a run id has no events in the log."""

    def __init__(self, run_id: str, path: str) -> None:
        super().__init__(f"run {run_id!r} not found in {path}: list runs with 'ledgerflow runs'")
        self.run_id = run_id
        self.path = path
