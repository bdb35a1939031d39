"""schemathesis against the OpenAPI document: no request may produce a 5xx.

Every operation of the served document (this core's and every other feature's) is
fuzzed with schema-derived cases (hypothesis), authenticated as an organisation owner
so requests get past authentication into validation and the services. Path
parameters ``org_id``/``fleet_id`` are set to the real ones for non-DELETE operations
(so bodies reach real rows); other ids stay random. Logout is excluded because it
would revoke the fuzzing session; it is exercised by the matrix and users tests.
"""

from __future__ import annotations

import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration

EXAMPLES = 12
EXCLUDED = {("POST", "/v1/auth/logout")}
#: 5xx found by this test in another feature's code, reported to its owner; they are
#: still fuzzed and printed as warnings, but do not fail this test until fixed
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def test_no_server_errors(api) -> None:
    headers = api.user_and_login("fuzz@example.org")
    org = api.client.post("/v1/orgs", headers=headers, json={"name": "fuzz"}).json()["id"]
    fleet = api.client.post(f"/v1/orgs/{org}/fleets", headers=headers, json={"name": "f"}).json()[
        "id"
    ]
    real = {"org_id": org, "fleet_id": fleet}
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        found: list[str] = []
        _fuzz(operation, headers, real, found)
        known = KNOWN_BUGS.get((operation.method.upper(), operation.path))
        if found and known:
            warnings.warn(f"known 5xx ({known}): {found[0]}", stacklevel=1)
        else:
            failures.extend(found)
    assert not failures, "\n".join(failures[:20])


def _fuzz(operation, headers: dict[str, str], real: dict[str, str], failures: list[str]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def fuzz(case) -> None:
        if case.path_parameters and operation.method.upper() != "DELETE":
            for name, value in real.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = value
        response = case.call(headers=headers)
        if response.status_code >= 500:
            failures.append(
                f"{operation.method.upper()} {case.formatted_path}: {response.status_code} "
                f"{response.content[:200]!r}"
            )
        assert b"Traceback" not in response.content

    fuzz()
