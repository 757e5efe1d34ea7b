"""Schema-based fuzzing (schemathesis against the service's own OpenAPI): no input yields a 5xx."""

from __future__ import annotations

import os
import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extras")
from hypothesis import HealthCheck, settings  # noqa: E402

from ppplan.api.app import create_app  # noqa: E402
from ppplan.api.settings import Settings  # noqa: E402
from ppplan.api.store.migrate import upgrade  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("PPPLAN_FUZZ_EXAMPLES", "40"))
"""examples per operation (raise it for a longer run)"""

_DB = os.path.join(tempfile.mkdtemp(prefix="ppplan-fuzz-"), "fuzz.db")
_URL = f"sqlite:///{_DB}"
upgrade(_URL)
app = create_app(Settings(database_url=_URL, max_gpus=64))  # a small cap keeps fuzzed solves short
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
