"""Retry policy for activity and sub-orchestration calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, init=False)
class RetryOptions:
    """When and how often a failed call is retried; the waits are durable timers.

    Same constructor as ``azure.durable_functions.RetryOptions`` with the
    optional knobs of the Durable Task Framework's ``RetryOptions``.
    """

    first_retry_interval_in_milliseconds: int
    max_number_of_attempts: int
    backoff_coefficient: float
    max_retry_interval_in_milliseconds: int | None
    retry_timeout_in_milliseconds: int | None

    def __init__(
        self,
        first_retry_interval_in_milliseconds: int,
        max_number_of_attempts: int,
        backoff_coefficient: float = 1.0,
        max_retry_interval_in_milliseconds: int | None = None,
        retry_timeout_in_milliseconds: int | None = None,
    ) -> None:
        if first_retry_interval_in_milliseconds <= 0:
            raise ValueError("first_retry_interval_in_milliseconds must be greater than 0")
        if max_number_of_attempts < 1:
            raise ValueError("max_number_of_attempts must be at least 1")
        if backoff_coefficient < 1.0:
            raise ValueError("backoff_coefficient must be at least 1.0")
        object.__setattr__(self, "first_retry_interval_in_milliseconds", first_retry_interval_in_milliseconds)
        object.__setattr__(self, "max_number_of_attempts", max_number_of_attempts)
        object.__setattr__(self, "backoff_coefficient", backoff_coefficient)
        object.__setattr__(self, "max_retry_interval_in_milliseconds", max_retry_interval_in_milliseconds)
        object.__setattr__(self, "retry_timeout_in_milliseconds", retry_timeout_in_milliseconds)

    def delay_after(self, attempt: int) -> timedelta:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ms = self.first_retry_interval_in_milliseconds * self.backoff_coefficient ** (attempt - 1)
        if self.max_retry_interval_in_milliseconds is not None:
            ms = min(ms, self.max_retry_interval_in_milliseconds)
        return timedelta(milliseconds=ms)

    def to_json(self) -> dict[str, float | int]:
        """The camel-case JSON shape the official SDK uses."""
        out: dict[str, float | int] = {
            "firstRetryIntervalInMilliseconds": self.first_retry_interval_in_milliseconds,
            "maxNumberOfAttempts": self.max_number_of_attempts,
            "backoffCoefficient": self.backoff_coefficient,
        }
        if self.max_retry_interval_in_milliseconds is not None:
            out["maxRetryIntervalInMilliseconds"] = self.max_retry_interval_in_milliseconds
        if self.retry_timeout_in_milliseconds is not None:
            out["retryTimeoutInMilliseconds"] = self.retry_timeout_in_milliseconds
        return out
