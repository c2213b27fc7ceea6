"""The worker's exception tree, grouped by what the caller can do about each branch::

    FeedbackWorkerError
      x ConfigError                a bad setting, named, at start-up; fix the environment
      x TopicMismatchError         an existing topic does not fit the worker's tables
      x IncompatibleLibraryError   the installed Faust/aiokafka/mode lacks what a correctness
                                   patch needs (worker.faust_compat); install a supported release
      x DeliveryError              a post to Helicone failed (.endpoint, .status, .body_excerpt)
        + RetryableDelivery        timeouts, connection errors, 408/425/429/5xx; .retry_after_s
          + RequestNotLogged       a property call's 500 "Request not found": not logged yet
        + PermanentDelivery        400/404/422: straight to the dead-letter topic
        + AuthRejected             401/403: pause delivery and probe; never dead-letter

Bad *input* is not an exception path: validation returns an ``Invalid`` value with a typed reason
and the adapter routes it to the invalid topic (see :mod:`worker.validation`).  No message built
here ever contains the Helicone API key.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthRejected",
    "ConfigError",
    "DeliveryError",
    "FeedbackWorkerError",
    "IncompatibleLibraryError",
    "PermanentDelivery",
    "RequestNotLogged",
    "RetryableDelivery",
    "TopicMismatchError",
]


class FeedbackWorkerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(FeedbackWorkerError):
    """One or more settings are invalid; ``problems`` has one line per variable."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class TopicMismatchError(FeedbackWorkerError):
    """An existing topic has a partition count the worker's tables cannot be co-partitioned with.

    Operator action: create the topic with ``TOPIC_PARTITIONS`` partitions, or set
    ``TOPIC_PARTITIONS`` to the topic's count before the worker's first start.
    """


class IncompatibleLibraryError(FeedbackWorkerError):
    """A correctness patch of :mod:`worker.faust_compat` cannot install on the installed
    faust-streaming, aiokafka or mode-streaming; the message names the patch, what is
    missing, what could go wrong without it, and the installed and supported releases.

    Operator action: install the releases pyproject.toml allows (``pip install -e .``).
    """


class DeliveryError(FeedbackWorkerError):
    """A call to Helicone did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.body_excerpt = body_excerpt[:2048]


class RetryableDelivery(DeliveryError):
    """Worth trying again later; ``retry_after_s`` is the server's hint, if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        body_excerpt: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status, body_excerpt=body_excerpt)
        self.retry_after_s = retry_after_s


class RequestNotLogged(RetryableDelivery):
    """Helicone answered a property call with its 500 "Request not found": the request is not
    logged yet (or never will be).  Worth a few tries for a bounded time, never a dead letter
    (:mod:`worker.evidence`)."""


class PermanentDelivery(DeliveryError):
    """Helicone will never accept this call as it is; dead-letter it with the reason."""


class AuthRejected(DeliveryError):
    """The key is missing, wrong or read-only: pause all delivery until a probe succeeds."""
