"""Property-based API fuzzing: schemathesis generates requests from the service's OpenAPI spec (valid and
invalid bodies, parameters, uploads), sends them to a real `mmrec serve` process that has API keys, with
the write key, and no response may be a 5xx. Bounded: a fixed number of examples per operation,
derandomized so a run is reproducible."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from mmrec.serving.app import openapi_spec
from service_support import READ_KEY, WRITE_KEY, Server, catalog_items

EXAMPLES_PER_OPERATION = 25
AUTH = {"api-key": WRITE_KEY}

# The spec comes from the same code the server runs (schemathesis' from_fixture loader does not work
# with pytest 9), the requests go to the real server.
schema = schemathesis.openapi.from_dict(openapi_spec())


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz") / "data", "--api-key", WRITE_KEY, "--read-only-api-key", READ_KEY,
                 headers=AUTH)
    assert srv.client.post("/items", json={"items": catalog_items()}).status_code == 200
    yield srv.url
    health = srv.client.get("/healthz")
    srv.stop()
    assert health.status_code == 200 and health.json()["items"] >= 1  # still alive after the fuzzing


@schemathesis.check
def key_accepted(ctx, response, case) -> None:
    """The write key opens every operation: a 401, or a 403 for the key, would mean the fuzzing never got past
    the guard. (A generated `Origin` header is refused with its own 403, before any key is looked at.)"""
    refused_key = response.status_code == 401 or (response.status_code == 403 and "key" in response.text)
    assert not refused_key, (response.status_code, response.text[:200])


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, server_url):
    case.call_and_validate(base_url=server_url, headers=AUTH, checks=[not_a_server_error, key_accepted], timeout=60)
