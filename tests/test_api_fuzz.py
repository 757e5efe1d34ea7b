"""Schema-based fuzzing (schemathesis against the service's own OpenAPI), on SQLite and PostgreSQL.

Every generated request must answer without a 5xx, with a status code, content type, headers and
body the OpenAPI document declares (``response_schema_conformance`` and friends); a stateful phase
follows the OpenAPI links (create a plan → get, export, measurements, delete) to chain real ids.
Each store lives in a pytest temporary folder or a throw-away PostgreSQL database made by a fixture
(not at import), so collecting or running this module leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extras")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402
from schemathesis.specs.openapi import checks as oa_checks  # noqa: E402

from ppplan.api.app import create_app  # noqa: E402
from ppplan.api.settings import Settings  # noqa: E402
from ppplan.api.store.engine import dispose_engine  # noqa: E402
from ppplan.api.store.migrate import upgrade  # noqa: E402
from tests.conftest import _pg_database  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("PPPLAN_FUZZ_EXAMPLES", "40"))
"""examples per operation (raise it for a longer run)"""
STATEFUL_EXAMPLES = int(os.environ.get("PPPLAN_FUZZ_STATEFUL_EXAMPLES", "15"))
"""state-machine runs (each a chain of linked calls)"""
BASE_URL = "http://127.0.0.1"  # a Host the service's default allowed hosts accept
CHECKS = [
    st_checks.not_a_server_error,
    oa_checks.status_code_conformance,
    oa_checks.content_type_conformance,
    oa_checks.response_headers_conformance,
    oa_checks.response_schema_conformance,
]
"""What a response must satisfy: no 5xx, and everything about it declared in the OpenAPI document."""


def _schema(url: str) -> object:
    upgrade(url)
    app = create_app(Settings(database_url=url, max_gpus=64))  # a small cap keeps fuzzed solves short
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app  # calls go to the app in-process (ASGI), with BASE_URL's Host
    return schema


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzz_schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The service's OpenAPI schema over an app on a fresh store of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
        yield _schema(url)
        dispose_engine(url)
        return
    admin = request.getfixturevalue("pg_admin_url")
    db = _pg_database(admin)
    url = next(db)
    try:
        yield _schema(url)
    finally:
        next(db, None)  # drops the database


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_answers_conform_to_the_openapi(case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=BASE_URL, checks=CHECKS)


def test_stateful_links(fuzz_schema: object) -> None:
    """Chains of linked calls (a created plan's id fed to get/export/measurements/delete)."""
    machine = fuzz_schema.as_state_machine()  # type: ignore[attr-defined]

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"base_url": BASE_URL}

        def validate_response(self, response: object, case: schemathesis.Case, **kwargs: object) -> None:
            case.validate_response(response, checks=CHECKS)

    Machine.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            stateful_step_count=6,
        )
    )


def test_importing_this_module_leaves_nothing_in_tmp() -> None:
    """Collecting the module used to create /tmp/ppplan-fuzz-* at import, on every pytest run."""
    import subprocess
    import sys
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("ppplan-fuzz-*"))
    code = "import importlib; importlib.import_module('tests.test_api_fuzz')"
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert set(Path(tempfile.gettempdir()).glob("ppplan-fuzz-*")) == before
