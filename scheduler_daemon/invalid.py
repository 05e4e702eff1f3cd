"""The refusal of an intake message: `InvalidJob`, with the reason sent back to its producer.
Raised by both parsers (`jobs.parse_job` and the dialect translators of `formats/`), which take
the wire's rules from `producers.schema` and word a broken one as an InvalidJob."""

from __future__ import annotations

from typing import Any

from producers import schema


class InvalidJob(ValueError):
    """A message that cannot become a job; the text is the reason sent back to the producer."""

    def __init__(self, reason: str, submission_id: str | None = None, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.submission_id = submission_id
        self.job_id = job_id


def parse_priority(raw: Any, where: str = "priority") -> int:
    """0..9 or HIGH, NORMAL, LOW (schema.check_priority), as an InvalidJob when it is neither."""
    try:
        return schema.check_priority(raw, where)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None
