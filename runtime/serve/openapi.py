"""The service's OpenAPI 3.1 schema, written by hand beside the routes (``http.ROUTES``);
``tests/test_serve.py`` checks that the two list the same operations."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]

_ERROR = {
    "description": "a one-line error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_HIT = {
    "type": "object",
    "properties": {
        "rank": {"type": "integer"},
        "score": {"type": "number"},
        "path": {"type": "string"},
        "page": {"type": "integer"},
    },
}
_QUERIES = {
    "type": "object",
    "description": "one query (`query`) or several (`queries`, at most 64)",
    "properties": {
        "query": {"type": "string"},
        "queries": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 64},
    },
}


def _op(summary: str, ok: dict[str, Any], body: dict[str, Any] | None = None, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, "400": _ERROR, "401": _ERROR, "500": _ERROR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"].update({"413": _ERROR, "429": _ERROR, "503": _ERROR})
    if not auth:
        op["security"] = []
        del op["responses"]["401"]
    return op


def _json(schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {"description": what, "content": {"application/json": {"schema": schema}}}


def openapi(version: str) -> dict[str, Any]:
    search_body = {
        **_QUERIES,
        "properties": {
            **_QUERIES["properties"],
            "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "rerank": {"type": ["integer", "null"], "minimum": 1, "description": "two-stage indexes: candidates"},
            "exact": {"type": "boolean", "default": False, "description": "two-stage indexes: score every page"},
        },
    }
    search_ok = {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": {"type": "array", "items": _HIT}, "description": "per query"},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
            "random_weights": {"type": "boolean"},
        },
    }
    embed_ok = {
        "description": "every query's vectors as little-endian float16 rows [sum n_i, dim], back to back; the "
        "X-Collfm2-Dim header gives dim and X-Collfm2-Offsets the row offsets (n_queries + 1 numbers)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    any_obj = {"type": "object"}
    any_json = _json(any_obj, "JSON")
    png = {"description": "image/png; X-Collfm2-Stale: true when the file changed since it was indexed"}
    page_params = [
        {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}},
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
        {"name": "max_side", "in": "query", "schema": {"type": "integer", "minimum": 16, "maximum": 4096}},
    ]
    job = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"enum": ["queued", "running", "done", "failed", "interrupted", "refused"]},
            "pages_seen": {"type": "integer"}, "pages_done": {"type": "integer"},
            "pages_skipped": {"type": "integer"}, "pages_failed": {"type": "integer"},
            "failures": {"type": "array", "items": {"type": "string"}, "description": "one line each (first 100)"},
            "committed_pages": {"type": "integer"}, "error": {"type": ["string", "null"]},
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "collfm2-edge",
            "version": version,
            "description": "Search an index of pages with text queries (SauerkrautLM-ColLFM2-450M).",
        },
        "components": {
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/search": {"post": _op("rank the index's pages for each query", _json(search_ok, "hits"), search_body)},
            "/embed/queries": {"post": _op("the queries' multi-vectors, float16", embed_ok, _QUERIES)},
            "/embed/images": {
                "post": {
                    **_op("images' multi-vectors, float16 (multipart/form-data, at most 16 images)", embed_ok),
                    "requestBody": {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": {"type": "object"}}},
                    },
                }
            },
            "/pages": {
                "post": {
                    **_op(
                        "add pages: uploaded files (multipart/form-data) or server-side paths under --allow-path",
                        {"description": "unused"},
                        {"type": "object", "properties": {"paths": {"type": "array", "items": {"type": "string"}}}},
                    ),
                    "responses": {
                        "202": _json(job, "the job, queued"),
                        "400": _ERROR,
                        "401": _ERROR,
                        "403": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "503": _ERROR,
                    },
                },
                "delete": {
                    **_op(
                        "forget the pages of stored files (?path=... repeated)", _json({"type": "object"}, "removed")
                    ),
                    "parameters": [{"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}],
                },
            },
            "/jobs/{id}": {
                "get": {
                    **_op("an ingestion job's progress (?pages=1 lists the pages committed)", _json(job, "the job")),
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                }
            },
            "/jobs/{id}/events": {
                "get": {
                    **_op(
                        "server-sent events: the job each time it changes, until it ends",
                        {"description": "text/event-stream; each event's data is the job as JSON"},
                    ),
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                }
            },
            "/pages/image": {"get": {**_op("an indexed page as PNG", png), "parameters": page_params}},
            "/pages/explain": {
                "get": {
                    **_op("the page with a query's similarity map over it (PNG; format=json: tokens and score)", png),
                    "parameters": [
                        *page_params,
                        {"name": "query", "in": "query", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "token",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "max (default), sum, or a query token's number",
                        },
                        {"name": "format", "in": "query", "schema": {"enum": ["png", "json"]}},
                    ],
                }
            },
            "/info": {"get": _op("index, bundle, engine and precision", any_json)},
            "/metrics": {"get": _op("Prometheus text", {"description": "text/plain; version=0.0.4"})},
            "/healthz": {"get": _op("the process is alive", any_json, auth=False)},
            "/readyz": {"get": _op("the model is loaded and the index readable (503 when not)", any_json)},
            "/openapi.json": {"get": _op("this schema", any_json, auth=False)},
            "/docs": {"get": _op("this schema as a page", {"description": "text/html"}, auth=False)},
            "/": {
                "get": _op(
                    "the web page: search, results, similarity maps, upload", {"description": "text/html"}, auth=False
                )
            },
        },
    }
