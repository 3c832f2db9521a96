"""Domain errors that carry the gRPC status a user should see.

Domain code raises these; one server interceptor turns them into
``context.abort(code, message)`` and the client maps the status back through a
closed table. The status is stored as the *name* of a ``grpc.StatusCode`` so
this module (and everything torch-free that raises) never imports grpc.
"""

from __future__ import annotations


class BitmeshError(Exception):
    """Base class: an error whose message tells the user what to fix."""

    status_name: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BitmeshError):
    """The request itself is wrong (bad spec, unknown name, bad numbers)."""

    status_name = "INVALID_ARGUMENT"


class NotFound(BitmeshError):
    """A referenced file, problem, job or artifact does not exist."""

    status_name = "NOT_FOUND"


class FailedPrecondition(BitmeshError):
    """The request is well formed but the world is not in a state to serve it
    (budgets no configuration meets, a file that would need unpickling, a job
    already finished)."""

    status_name = "FAILED_PRECONDITION"


class ResourceExhausted(BitmeshError):
    """A cap was hit (concurrent jobs, memory, message size)."""

    status_name = "RESOURCE_EXHAUSTED"


class Unavailable(BitmeshError):
    """A dependency (Redis, a peer service) cannot be reached."""

    status_name = "UNAVAILABLE"


class Unimplemented(BitmeshError):
    """A call whose capability has not landed yet; the message names it."""

    status_name = "UNIMPLEMENTED"


class Cancelled(BitmeshError):
    """Work stopped because its job was cancelled."""

    status_name = "CANCELLED"


ERRORS_BY_STATUS: dict[str, type[BitmeshError]] = {
    cls.status_name: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unimplemented,
        Cancelled,
    )
}
