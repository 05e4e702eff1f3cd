"""The OpenAPI 3.1 description of the daemon's HTTP API, as a plain dict (`GET /openapi.json`).

Schemas are JSON Schema 2020-12. Objects the daemon builds are closed (`additionalProperties:
false`), so the tests that validate live answers against this document catch any field that
is added without being described here. Event bodies stay open: they are the broker contract.
"""

from __future__ import annotations

import copy
from typing import Any

from producers.packages import PACKAGE_NAME
from producers.schema import SUBMISSION_ID_PATTERN

from .store import STATES

STOP_OUTCOMES = ("cancelled", "stopping", "recorded", "already_final", "failed", "unknown", "refused")
HEALTH = ("unknown", "up", "degraded", "down")

_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
# A query parameter as the API takes it: non-empty, at most 1024 characters, no control characters.
_PARAM = {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^[^\\u0000-\\u001f\\u007f]*$"}
_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"}}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, closed: bool = True, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": [k for k in properties if k not in optional], "additionalProperties": not closed}


_STATE = {"type": "string", "enum": sorted(STATES)}
_PACKAGE_PATTERN = f"^{PACKAGE_NAME.pattern}$"  # JSON Schema patterns are not anchored

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "what went wrong, for a person"}}),
    "Health": _object({"status": {"const": "ok"}}),
    "Readiness": _object({
        "ready": {"type": "boolean"},
        "role": {"type": "string", "enum": ["leader", "standby"],
                 "description": "the daemon's role in a failover group (without failover: leader)"},
        "broker": {"type": "boolean", "description": "connected to RabbitMQ"},
        "scheduler": {"type": "boolean", "description": "the scheduler has reported its clusters lately"},
        "clusters_probed": {"type": "boolean", "description": "at least one cluster has answered a probe"},
        "stopping": {"type": "boolean"},
    }),
    "Transition": _object({
        "state": _STATE,
        "attempt": {"type": "integer", "minimum": 1},
        "cluster": _STR_OR_NULL,
        "ts": _TIME,
        "message": _STR_OR_NULL,
    }),
    "Job": _object({
        "submission_id": {"type": "string", "pattern": SUBMISSION_ID_PATTERN, "minLength": 1, "maxLength": 128},
        "job_id": _STR_OR_NULL,
        "owner": {"type": ["string", "null"], "description": (
            "the broker user that submitted it (the message's user_id, else the daemon's default_owner); "
            "null for a job recorded before owners")},
        "depends_on": {"type": "array", "items": _STR,
                       "description": "runs only after each of these SUCCEEDED (WAITING until then)"},
        "queue": {"type": "string", "description": "its queue (docs/queues.md)"},
        "state": _STATE,
        "cluster": {"type": ["string", "null"], "description": "placed cluster, null before placement"},
        "attempt": {"type": "integer", "minimum": 1},
        "final": {"type": "boolean", "description": "true once the job will never change again"},
        "message": _STR_OR_NULL,
        "priority": {"type": ["integer", "null"]},
        "tags": {"type": "array", "items": _STR},
        "metadata": _STRINGS,
        "resource_requirements": _NUMBERS,
        "created": _TIME,
        "updated": _TIME,
        "deleted_from_cluster": {"type": "boolean",
                                 "description": "removed from Ray after the retention; its logs are gone"},
        "transitions": {"type": "array", "items": _ref("Transition"),
                        "description": "every state change with its time, in order (empty in lists)"},
    }),
    "JobPage": _object({
        "jobs": {"type": "array", "items": _ref("Job")},
        "next_cursor": {"type": ["string", "null"],
                        "description": "pass as `cursor` for the next page; null on the last page"},
    }),
    "Logs": _object({
        "submission_id": _STR,
        "cluster": _STR,
        "logs": {"type": "string", "description": "the job's driver logs, as Ray gives them: their last "
                                                  "`tail` characters at most"},
        "truncated": {"type": "boolean", "description": "the log is longer: only its end is here"},
    }),
    "StopRequest": _object({"reason": {"type": "string", "minLength": 1, "maxLength": 1024}},
                           optional=("reason",)),
    "StopAnswer": _object({
        "submission_id": _STR,
        "outcome": {"type": "string", "enum": list(STOP_OUTCOMES), "description": (
            "cancelled: never dispatched, now CANCELLED; stopping: stop sent to its cluster, it ends "
            "STOPPED; recorded: not seen yet, cancelled if it arrives; already_final: it had ended; "
            "failed: its cluster did not take the stop; unknown: it runs where this daemon cannot stop it; "
            "refused: the caller is neither the job's owner nor an admin, and the job goes on")},
        "message": _STR,
    }),
    "Node": _object({"node_id": _STR, "total": _NUMBERS, "available": _NUMBERS}),
    "Cluster": _object({
        "name": _STR,
        "health": {"type": "string", "enum": list(HEALTH)},
        "dashboard_url": _STR,
        "tags": {"type": "array", "items": _STR},
        "total": _NUMBERS,
        "available": _NUMBERS,
        "nodes": {"type": "array", "items": _ref("Node")},
        "last_probe": {"type": ["number", "null"], "description": "Unix time of the last probe"},
        "latency_s": {"type": ["number", "null"]},
        "error": {"type": ["string", "null"], "description": "the last probe's error"},
    }),
    "ClusterList": _object({"clusters": {"type": "array", "items": _ref("Cluster")}}),
    "Queue": _object({
        "name": _STR, "configured": {"type": "boolean", "description": "false: removed, messages may wait in it"},
        "weight": {"type": ["number", "null"]}, "guaranteed": _NUMBERS, "limit": {"type": ["object", "null"]},
        "max_running": {"type": ["integer", "null"]}, "publishers": {"type": ["array", "null"], "items": _STR},
        "held": _NUMBERS, "running": {"type": "integer", "description": "jobs dispatched and not final"},
        "waiting_in_daemon": {"type": "integer"}, "waiting_in_broker": {"type": ["integer", "null"]},
        "dominant_share": {"type": "number", "description": "weighted dominant resource share"},
    }),
    "QueueList": _object({"queues": {"type": "array", "items": _ref("Queue")}}),
    "Deleted": _object({"submission_id": {"type": "string"}, "deleted": {"type": "boolean", "const": True}}),
    "Package": _object({"name": {"type": "string", "pattern": _PACKAGE_PATTERN},
                        "size": {"type": "integer", "minimum": 0}}),
    "JobEvent": _object({
        "event": {"type": "string", "description": "routing key job.<state>.<cluster or _>"},
        "state": _STATE,
        "submission_id": _STR_OR_NULL,
        "job_id": _STR_OR_NULL,
        "cluster": _STR_OR_NULL,
        "attempt": {"type": "integer"},
        "ts": _TIME,
        "message": _STR_OR_NULL,
        "final": {"type": "boolean"},
        "tags": {"type": "array", "items": _STR},
        "metadata": _STRINGS,
        "priority": {"type": ["integer", "null"]},
        "resource_requirements": _NUMBERS,
        "correlation_id": _STR_OR_NULL,
        "reply_to": _STR_OR_NULL,
        "owner": {"type": ["string", "null"], "description": "the broker user that submitted the job"},
        "queue": {"type": ["string", "null"], "description": "its queue (docs/queues.md)"},
    }, closed=False, optional=("owner", "queue")),
    "ClusterEvent": _object({
        "event": {"type": "string", "description": "routing key cluster.<health>.<cluster>"},
        "cluster": _STR,
        "health": {"type": "string", "enum": list(HEALTH)},
        "ts": _TIME,
        "message": _STR_OR_NULL,
    }, closed=False),
    "DroppedEvent": _object({
        "event": {"const": "dropped"},
        "count": {"type": "integer", "minimum": 1,
                  "description": "events this client missed because it read too slowly"},
    }),
}

_SID_PARAM = {"name": "submission_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": SUBMISSION_ID_PATTERN, "minLength": 1, "maxLength": 128}}


_PACKAGE_PARAM = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": _PACKAGE_PATTERN}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_LIST_PARAMS = [
    _query("state", {"type": "string", "enum": sorted(STATES)},
           "only jobs in this state (case-insensitive)"),
    _query("cluster", _PARAM, "only jobs placed on this cluster"),
    _query("tag", _PARAM, "only jobs carrying this tag"),
    _query("owner", _PARAM, "only jobs submitted by this broker user"),
    _query("queue", _PARAM, "only jobs of this queue"),
    _query("since", {**_PARAM, **_TIME}, "only jobs created at or after this RFC 3339 time"),
    _query("until", {**_PARAM, **_TIME}, "only jobs created before this RFC 3339 time"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size"),
    _query("cursor", _PARAM, "`next_cursor` of the previous page"),
]


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


_INTERNAL = _error("unexpected failure; the body never carries details")
_BAD = _error("a query parameter, the submission id or the body is not valid; `error` says which")


_LIMITED = _error("too many requests from this client (api_rate_limit); `Retry-After` says when to ask again")
_NO_TOKEN = _error("reads need a token (api_reads_need_token) and the request has no valid "
                   "`Authorization: Bearer` token")


def _op(summary: str, responses: dict[str, Any], *, op_id: str, tag: str,
        parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        description: str | None = None, security: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    guarded = {} if tag == "health" and op_id in ("healthz", "readyz") else {"401": _NO_TOKEN, "429": _LIMITED}
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag],
                          "responses": {**guarded, **responses, "500": _INTERNAL}}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    if security is not None:
        op["security"] = security
    return op


PATHS: dict[str, Any] = {
    "/healthz": {"get": _op("liveness", {"200": _json("Health", "the daemon runs")},
                            op_id="healthz", tag="health")},
    "/readyz": {"get": _op("readiness", {
        "200": _json("Readiness", "connected to the broker and at least one cluster probed"),
        "503": _json("Readiness", "not ready yet, or stopping"),
    }, op_id="readyz", tag="health")},
    "/api/v1/jobs": {"get": _op("list jobs", {
        "200": _json("JobPage", "one page, oldest first"),
        "400": _BAD,
    }, op_id="listJobs", tag="jobs", parameters=_LIST_PARAMS, description=(
        "Keyset pagination in the order jobs were first seen: a page never repeats a job, and a "
        "job that exists when the first page is asked for is on exactly one page, whatever is "
        "added meanwhile. Every parameter at most once; unknown or empty parameters are a 400."))},
    "/api/v1/jobs/{submission_id}": {"get": _op("one job with its history", {
        "200": _json("Job", "the job"),
        "400": _BAD,
        "404": _error("no job with this id"),
    }, op_id="getJob", tag="jobs", parameters=[_SID_PARAM]), "delete": _op("delete a job that ended", {
        "200": _json("Deleted", "deleted from its cluster and forgotten"),
        "400": _BAD,
        "403": _error("the caller is neither the job's owner nor an admin"),
        "404": _error("no job with this id"),
        "409": _error("the job has not ended: stop it first"),
        "502": _error("its cluster did not delete the job; nothing was forgotten"),
    }, op_id="deleteJob", tag="jobs", parameters=[_SID_PARAM], security=[{}, {"bearer": []}], description=(
        "Seed 004's `job delete`: each attempt's Ray job is deleted from its cluster (unless "
        "`ray_job_retention_s` did already), then the job's record, history and kept log tail are "
        "forgotten. With API tokens configured it needs one."))},
    "/api/v1/jobs/{submission_id}/logs": {"get": _op("the job's logs, from its cluster", {
        "200": _json("Logs", "the logs"),
        "400": _BAD,
        "404": _error("no job with this id"),
        "403": _error("reads need a token and the caller is neither the job's owner nor an admin"),
        "409": _error("the job has no logs to give: not dispatched yet, or deleted from its cluster"),
        "502": _error("its cluster did not answer or refused"),
    }, op_id="getJobLogs", tag="jobs", parameters=[_SID_PARAM, _query(
        "tail", {"type": "integer", "minimum": 1},
        "at most this many characters, the end of the log (default and most: the max_log_bytes setting)")])},
    "/api/v1/jobs/{submission_id}/stop": {"post": _op("stop a job", {
        "202": _json("StopAnswer", "taken: outcome cancelled, stopping or recorded"),
        "400": _BAD,
        "401": _error("tokens are configured and the request has no valid `Authorization: Bearer` token"),
        "403": _json("StopAnswer", "outcome refused: the caller is neither the job's owner nor an admin"),
        "409": _json("StopAnswer", "outcome already_final (it had ended) or unknown (cannot be stopped here)"),
        "413": _error("the body is larger than 64 KiB"),
        "502": _json("StopAnswer", "outcome failed: its cluster did not take the stop"),
        "504": _error("the scheduler did not answer in time; the request stays queued for it"),
    }, op_id="stopJob", tag="jobs", parameters=[_SID_PARAM], body={
        "required": False,
        "content": {"application/json": {"schema": _ref("StopRequest")}},
    }, security=[{}, {"bearer": []}], description=(
        "Same effect as publishing `control.stop`. Repeating it is harmless. With API tokens "
        "configured it needs one, and only the job's owner (the token's user) or an admin may stop "
        "it; without tokens the API listens on loopback only and its callers may stop any job."))},
    "/api/v1/clusters": {"get": _op("the clusters as last probed", {
        "200": _json("ClusterList", "every configured cluster"),
        "400": _BAD,
    }, op_id="listClusters", tag="clusters")},
    "/api/v1/queues": {"get": _op("the queues as the scheduler last reported them", {
        "200": _json("QueueList", "every queue, and any removed one whose RabbitMQ queue still exists"),
        "400": _BAD,
    }, op_id="listQueues", tag="clusters")},
    "/api/v1/packages/{name}": {
        "get": _op("whether rmcs keeps a job's code package", {
            "200": _json("Package", "kept"),
            "400": _BAD,
            "404": _error("not kept"),
        }, op_id="getPackage", tag="jobs", parameters=[_PACKAGE_PARAM]),
        "put": _op("keep a job's code package", {
            "200": _json("Package", "kept already"),
            "201": _json("Package", "kept now"),
            "400": _BAD,
            "413": _error("more than max_package_bytes"),
        }, op_id="putPackage", tag="jobs", parameters=[_PACKAGE_PARAM], body={
            "required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }, security=[{}, {"bearer": []}], description=(
            "The zip of a job's local `working_dir` or `py_modules` entry, which the producers' helper "
            "uploads; jobs then name `gcs://<name>` and the scheduler puts the package on the cluster "
            "a job goes to before its POST (docs/producers.md). The name must be the SHA-1 of the bytes. "
            "With API tokens configured it needs one."))},
    "/api/v1/events": {"get": _op("live lifecycle events (server-sent events)", {
        "200": {"description": (
            "An endless `text/event-stream`. Each event: `event: <routing key>` and `data: <JSON>` "
            "(a JobEvent or ClusterEvent; `dropped` with a DroppedEvent when this client read too "
            "slowly and missed some). A comment line is sent at once and every 15 s. The stream "
            "ends when the daemon stops."),
            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        "400": _BAD,
        "503": _error("the daemon is stopping, or max_event_streams streams are open (`Retry-After`)"),
    }, op_id="streamEvents", tag="events", parameters=[
        _query("pattern", {"type": "string", "default": "#", "minLength": 1, "maxLength": 255},
               "AMQP topic pattern on the routing key (`*` one word, `#` any words), e.g. `job.#`, "
               "`job.failed.*`, `cluster.#`; URL-encode `#` as `%23`"),
    ])},
    "/metrics": {"get": _op("Prometheus metrics", {
        "200": {"description": "Prometheus text exposition format 0.0.4; every name starts with rmcs_",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
    }, op_id="metrics", tag="health")},
    "/openapi.json": {"get": _op("this document", {
        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
    }, op_id="openapi", tag="health")},
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
    "info": {
        "title": "rmcs scheduler daemon",
        "version": "1",
        "description": "Status, logs and stop of jobs scheduled onto Ray clusters, the clusters' state, "
                       "a live event stream and metrics. Every error answer is `{\"error\": message}`.",
    },
    "tags": [{"name": "jobs"}, {"name": "clusters"}, {"name": "events"}, {"name": "health"}],
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "a token of the daemon's api_tokens_file; needed for POST when tokens are configured, "
                       "and for every request but /healthz and /readyz with api_reads_need_token"}}},
}


def document(max_log_bytes: int | None = None) -> dict[str, Any]:
    """A fresh copy of the document (callers may add `servers`), with the service's own bound on
    a log's `tail` when given."""
    doc = copy.deepcopy(_DOCUMENT)
    if max_log_bytes is not None:
        for param in doc["paths"]["/api/v1/jobs/{submission_id}/logs"]["get"]["parameters"]:
            if param["name"] == "tail":
                param["schema"]["maximum"] = max_log_bytes
    return doc
