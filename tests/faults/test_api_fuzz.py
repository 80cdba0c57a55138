"""The HTTP API fuzzed from its own OpenAPI document (schemathesis) against a real lobbyd.

Every operation of /openapi.json gets generated requests, valid ones (positive mode)
and invalid ones (negative mode). Every answer must be no 5xx and must conform to
the document: a documented status code, the documented content type, a body that
matches the documented schema, documented headers.

Two things would hang a fuzzer, so they are kept out:
- `GET /v1/events` is a Server-Sent Events stream that never ends: excluded.
- Blocking queries: any GET with `?index=N` is held until the registry's index moves
  or `wait` runs out (default 5 minutes). Whenever a generated request carries
  `index`, its `wait` is replaced by 50ms; `index` itself is still fuzzed, and `wait`
  is fuzzed freely on requests without `index` (where it has no effect).

Examples are derandomized (the same requests on every run) so the suite does not
flake; LOBBY_FUZZ_EXAMPLES=N runs N random examples per operation and mode instead.
"""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from support import envelope, nats_publish, wait_for

pytestmark = pytest.mark.fault

# LOBBY_FUZZ_EXAMPLES=500 searches harder, with fresh random examples on every run
MAX_EXAMPLES = int(os.environ.get("LOBBY_FUZZ_EXAMPLES") or 30)
DERANDOMIZE = not os.environ.get("LOBBY_FUZZ_EXAMPLES")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def _bound_blocking(case) -> None:
    if isinstance(case.query, dict) and "index" in case.query:
        case.query["wait"] = "50ms"


@pytest.mark.parametrize("token", ["", "s3cret"], ids=["open", "token"])
def test_api_answers_conform_to_its_openapi_document(nats_server, channel, spawn, token):
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "TTL": "300"}
    env["TOKEN"] = token
    auth = {"Authorization": f"Token {token}"} if token else {}
    node = spawn("self.example", env)
    # listing itself means it is subscribed: only then can it hear the peers below
    wait_for(lambda: node.hostnames() == ["self.example"], what="listed itself")

    peers = [
        envelope("web1.example", ["service:web", "prometheus:node", "location:prague"]),
        envelope(
            "db1.example",
            [
                "prometheus:node:host:10.0.0.1",
                "prometheus:node:port:9100",
                "prometheus:node:bad-key:x",
                "prometheus:node:host:2a03::1",
            ],
        ),
        envelope("bare.example", []),
    ]
    nats_publish(nats_server.url, channel, peers)
    wait_for(lambda: len(node.hostnames()) == 4, what="peers listed")

    schema = schemathesis.openapi.from_url(f"{node.url}/openapi.json", headers=auth)
    schema = schema.exclude(path="/v1/events")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert "GET /v1/discoveries" in labels and "POST /v1/labels" in labels
    assert not any("/v1/events" in label for label in labels)

    document = node.get("/openapi.json").json()
    public = {  # operations that need no token (the health check)
        f"{method.upper()} {path}"
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if op.get("security") == []
    }
    assert public == ({"GET /v1/health"} if token else set())

    failures: dict[str, str] = {}
    calls = 0
    started = time.monotonic()
    for operation in operations:
        guarded = bool(token) and operation.label not in public
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=DERANDOMIZE,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case) -> None:
                nonlocal calls
                _bound_blocking(case)
                calls += 1
                case.call_and_validate(checks=CHECKS, headers=auth, timeout=10)
                if guarded:  # noqa: B023 - used within this loop turn only
                    # the same request without the token: a documented 403
                    case.headers = {}
                    response = case.call(timeout=10)
                    assert response.status_code == 403
                    case.validate_response(response, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collect every operation's finding, then fail
                failures[f"{operation.label} [{mode.value}]"] = str(exc)[:3000]
    took = time.monotonic() - started
    print(
        f"\nFIGURE schemathesis ({'token' if token else 'open'}): {calls} requests over {len(operations)} operations in {took:.1f} s"
    )
    assert node.running
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
