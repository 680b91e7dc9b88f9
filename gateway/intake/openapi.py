"""The OpenAPI 3.1 description of the HTTP API; schemas come from the Structs themselves,
so the document cannot drift from what the decoder accepts."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from gateway import __version__
from gateway.model.decision import OUTCOMES, Decision
from gateway.model.job import Job

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "path": {"type": "string", "description": "JSON path of the bad field, e.g. $.recipients[3].email"},
    },
    "required": ["error", "message"],
}


_INSTANT = {"type": "string", "format": "date-time"}
_OPT_OUT = {
    "type": "object",
    "properties": {"address": {"type": "string"}, "campaign": {"type": ["string", "null"]}, "at": _INSTANT},
}
_INVALID_TOKEN = {
    "type": "object",
    "properties": {
        "channel": {"type": "string"},
        "token": {"type": "string"},
        "user_id": {"type": "string"},
        "job_id": {"type": "string"},
        "at": _INSTANT,
    },
}
_page_parameters = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
]


def _feed(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "array", "items": item}, "next_cursor": {"type": ["string", "null"]}},
    }


@functools.cache
def openapi_spec() -> dict[str, Any]:
    (job_schema, decision_schema), components = msgspec.json.schema_components((Job, Decision), ref_template=_REF)
    components["Error"] = _ERROR
    instant = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
    for name in ("Decision", "Earlier"):  # stored as epoch seconds, shown as RFC 3339
        properties = components[name]["properties"]
        properties["at"] = instant
        properties["until"] = {**instant, "description": "deferred: when it is released (RFC 3339, UTC)"}
    components["Accepted"] = {
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "recipients": {"type": "integer"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["job_id", "recipients"],
    }
    components["JobStatus"] = {
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "campaign": {"type": "string"},
            "state": {
                "enum": ["accepted", "running", "waiting", "completed", "cancelled"],
                "description": "waiting: every recipient decided, deferred messages scheduled; cancelled: a cancel "
                "was asked for before it completed",
            },
            "recipients": {"type": "integer"},
            "recipients_done": {"type": "integer"},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "created_at": instant,
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "decisions": {"type": "array", "items": decision_schema},
            "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
        },
    }
    components["DecisionPage"] = {
        "type": "object",
        "properties": {
            "decisions": {"type": "array", "items": decision_schema},
            "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
        },
    }
    components["JobList"] = {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": _ref("JobStatus"), "description": "without their decisions"},
            "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
        },
    }
    err = _ref("Error")
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Notification gateway", "version": __version__},
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Accept a send job; 202 only once it is durably stored",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "description": "Hold the answer up to this long (e.g. 500ms, 2s; at most intake.max_wait) "
                            "for the job's decisions: 200 when every recipient is decided within it, else 202",
                            "schema": {"type": "string", "pattern": "^[0-9]{1,6}(\\.[0-9]{1,3})?(ms|s)$"},
                        },
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": job_schema}}},
                    "responses": {
                        "200": _json(_ref("JobStatus"), "With `wait`: stored, and every recipient decided in time"),
                        "202": _json(_ref("Accepted"), "Accepted and stored"),
                        "400": _json(err, "Invalid job; `path` names the field"),
                        "401": _json(err, "Missing or unknown API key"),
                        "409": _json(err, "Idempotency-Key reused with a different body"),
                        "413": _json(err, "Body or recipient list over the configured limit"),
                        "429": _json(
                            err,
                            "Too much in flight (recipients, queued jobs, or the oldest queued job's age); "
                            "retry after the Retry-After header",
                        ),
                        "503": _json(err, "Not accepting jobs (shutting down or store unavailable)"),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "Job state, counts per outcome and decisions (paginated)",
                    "security": bearer,
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                    "responses": {"200": _json(_ref("JobStatus"), "The job"), "404": _json(err, "No such job")},
                }
            },
            "/v1/jobs/{job_id}/decisions": {
                "get": {
                    "summary": "The job's decisions that match (by outcome, channel, user), in recipient then "
                    "channel order, a page at a time",
                    "security": bearer,
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "outcome", "in": "query", "schema": {"enum": list(OUTCOMES)}},
                        {"name": "channel", "in": "query", "schema": {"type": "string"}},
                        {"name": "user_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(_ref("DecisionPage"), "A page of decisions"),
                        "400": _json(err, "A bad query parameter"),
                        "404": _json(err, "No such job (or another tenant's)"),
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job: no further batch starts, its messages waiting in the schedule are "
                    "suppressed: cancelled, and it ends `cancelled`; asking again gives the same answer",
                    "security": bearer,
                    "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(_ref("JobStatus"), "Cancelled, or cancelling (the batches under way finish)"),
                        "404": _json(err, "No such job (or another tenant's)"),
                        "409": _json(err, "The job has completed"),
                    },
                }
            },
            "/v1/preview": {
                "post": {
                    "summary": "What a job would do to each recipient: variant, skipped variants, rendered content "
                    "and the decision per channel. Nothing is sent, stored or counted.",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "now",
                            "in": "query",
                            "required": False,
                            "description": "evaluate at this instant (RFC 3339 with an offset)",
                            "schema": {"type": "string", "format": "date-time"},
                        }
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": job_schema}}},
                    "responses": {
                        "200": _json({"type": "object"}, "The preview"),
                        "400": _json(err, "Invalid job; `path` names the field"),
                        "413": _json(err, "Over a limit"),
                    },
                }
            },
            "/v1/unsubscribe/{token}": {
                "post": {
                    "summary": "RFC 8058 one-click unsubscribe (no API key: mail providers call it)",
                    "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "unsubscribed"}, "404": _json(err, "Unknown link")},
                },
                "get": {
                    "summary": "A page with an unsubscribe button (a GET never unsubscribes)",
                    "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "the page"}, "404": _json(err, "Unknown link")},
                },
            },
            "/v1/opt-outs/{address}": {
                "delete": {
                    "summary": "Upstream has a new subscription state for this address: stop suppressing it",
                    "security": bearer,
                    "parameters": [{"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"204": {"description": "cleared"}, "404": {"description": "no opt-out recorded"}},
                }
            },
            "/v1/opt-outs": {
                "get": {
                    "summary": "The tenant's one-click opt-outs, oldest first, a page at a time",
                    "security": bearer,
                    "parameters": _page_parameters,
                    "responses": {"200": _json(_feed("opt_outs", _OPT_OUT), "A page of opt-outs")},
                }
            },
            "/v1/invalid-tokens": {
                "get": {
                    "summary": "Device tokens and push subscriptions the tenant's jobs found dead, oldest first",
                    "security": bearer,
                    "parameters": _page_parameters,
                    "responses": {"200": _json(_feed("invalid_tokens", _INVALID_TOKEN), "A page of dead tokens")},
                }
            },
            "/v1/users/{user_id}": {
                "delete": {
                    "summary": "Erase the user's profile data (attributes, events, address, devices) from the stored "
                    "body of every job of the tenant, ended or not; decisions keep their outcomes",
                    "security": bearer,
                    "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "`{user_id, jobs}`: how many jobs held the user"}},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "summary": "Ready (or degraded: a channel's provider failing or its circuit open) when the "
                    "store is up and the gateway accepts jobs; each channel's state (up, degraded, open)",
                    "responses": {
                        "200": {"description": "ready or degraded"},
                        "503": {"description": "not ready: the store is down, or starting or stopping"},
                    },
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}
            },
            "/v1/console/summary": {
                "get": {
                    "summary": "What the console shows: recent jobs with counts, channel health, the deferred "
                    "backlog by reason, deliveries and latency per channel over the last hour",
                    "security": bearer,
                    "responses": {"200": {"description": "the summary"}},
                }
            },
            "/console": {
                "get": {
                    "summary": "The operator console (a page; its data needs an API key)",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
            "/console/{name}": {
                "get": {
                    "summary": "The console's script and stylesheet",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "the file"}, "404": {"description": "no such file"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
    }
    spec["paths"]["/v1/jobs"]["get"] = {
        "summary": "The tenant's jobs, newest first (an admin key: every tenant's, or `tenant=`), with their counts",
        "security": bearer,
        "parameters": [
            {"name": "campaign", "in": "query", "schema": {"type": "string"}},
            {
                "name": "state",
                "in": "query",
                "schema": {"enum": ["accepted", "running", "waiting", "completed", "cancelled"]},
            },
            {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            {"name": "tenant", "in": "query", "schema": {"type": "string"}, "description": "admin keys only"},
        ],
        "responses": {"200": _json(_ref("JobList"), "A page of jobs"), "400": _json(err, "A bad query parameter")},
    }
    return spec
