"""schemathesis over the API's own /openapi.json, with every check, on SQLite and PostgreSQL.

Each operation gets a bounded number of generated requests (derandomised: the same ones every run) with
the admin token; every response must be what the schema says: status code documented, body matching its
schema, headers, no 5xx. COPD_FUZZ_EXAMPLES=200 for a longer hunt by hand.

One check is left out: `positive_data_acceptance` expects every request the JSON schema admits to succeed,
but a run spec has rules no JSON schema states (a builtin domain's name, an expert named in
`teacher_weights` or the topology, prompts divisible by the GPUs); the API answers those with a 422 naming
the field, which is the contract (docs/api.md). Every other check runs.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.server.conftest import ADMIN, Api

EXAMPLES = int(os.environ.get("COPD_FUZZ_EXAMPLES", "0"))


# A body refused for its size (413, documented on every route with a body) is a rejection too: the samples
# route's cap (4 MiB) is below what a schema-violating body of 64 prompts × 16 oversize images reaches.
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": [
    400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]}}})


@pytest.fixture
def app_schema(api: Api):
    """The app of the module's backend, its tables emptied, as a schemathesis schema."""
    return schemathesis.openapi.from_asgi("/openapi.json", api.client.app, config=CONFIG)


schema = schemathesis.pytest.from_fixture("app_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES or 8, deadline=None, derandomize=not EXAMPLES,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=[positive_data_acceptance])
