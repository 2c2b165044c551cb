"""Errors that carry an HTTP status, so the API and the CLI report the same message."""


class BackendError(Exception):
    """A problem with a request or its inputs; the message says what and what to do."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFoundError(BackendError):
    status_code = 404


class ConflictError(BackendError):
    """The request would replace a file it did not ask to replace, or one another job is writing."""

    status_code = 409


class TooManyJobsError(BackendError):
    status_code = 429


class ModelPackageError(BackendError):
    """The .onnx file is not a usable model package."""


class JobCancelled(Exception):
    """Raised inside a running job when its cancel flag is seen."""
