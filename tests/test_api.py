"""The REST service under /v1 on SQLite and PostgreSQL (TestClient, in process)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ppplan.api.store import repo
from ppplan.profiler.analytic import analytic_profile, model_spec

BODY = {"model": "llama-3.1-8b", "gpus": "4xH100"}


def _plan(client: TestClient, **kw: Any) -> dict[str, Any]:
    r = client.post("/v1/plans", json={**BODY, **kw})
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def test_health_and_docs(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/plans",
        "/v1/plans/{plan_id}",
        "/v1/plans/{plan_id}/export/{fmt}",
        "/v1/profiles",
        "/v1/plans/{plan_id}/measurements",
        "/v1/jobs/{job_id}",
        "/healthz",
    } <= set(paths)


def test_create_fetch_list_plan(client: TestClient) -> None:
    r = client.post("/v1/plans", json=BODY)
    assert r.status_code == 201
    first = r.json()
    assert first["cached"] is False and first["plan"]["schema_version"] == 1
    assert first["plan"]["request"]["gpus"] == "4xH100-SXM-80GB"  # normalised to the catalog name
    r2 = client.post("/v1/plans", json={**BODY, "prompt_tokens": 2048})  # a default spelled out: same request
    assert r2.status_code == 200 and r2.json()["id"] == first["id"] and r2.json()["cached"] is True
    got = client.get(f"/v1/plans/{first['id']}").json()
    assert got["plan"] == first["plan"]
    listing = client.get("/v1/plans").json()
    assert listing["count"] == 1 and listing["data"][0]["id"] == first["id"]
    row = listing["data"][0]
    deg = first["plan"]["degrees"]
    assert (row["tp"], row["pp"], row["replicas"]) == (deg["tp"], deg["pp"], deg["replicas"])
    assert row["gpu_kind"] == first["plan"]["cluster"]["gpu"]


def test_list_filters_and_pagination(client: TestClient) -> None:
    _plan(client)
    _plan(client, gpus="2xA100-80GB", objective="latency")
    _plan(client, model="tiny-llama", gpus="1xL4", prompt_tokens=128, output_tokens=64)
    assert client.get("/v1/plans", params={"gpu": "H100"}).json()["count"] == 1
    assert client.get("/v1/plans", params={"model": "tiny-llama"}).json()["count"] == 1
    assert client.get("/v1/plans", params={"objective": "latency"}).json()["count"] == 1
    page = client.get("/v1/plans", params={"limit": 2, "offset": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 1
    assert client.get("/v1/plans", params={"created_after": "2999-01-01T00:00:00Z"}).json()["count"] == 0
    assert client.get("/v1/plans", params={"created_before": "2999-01-01"}).json()["count"] == 3
    r = client.get("/v1/plans", params={"gpu": "Z999"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "gpu"
    assert client.get("/v1/plans", params={"limit": 0}).status_code == 422


def test_exports(client: TestClient) -> None:
    pid = _plan(client)["id"]
    r = client.get(f"/v1/plans/{pid}/export/vllm")
    assert (
        r.status_code == 200
        and "VLLM_PP_LAYER_PARTITION=" in r.text
        and r.headers["content-type"].startswith("text/plain")
    )
    assert "SGLANG_PP_LAYER_PARTITION" in client.get(f"/v1/plans/{pid}/export/sglang").text
    assert "pp_partition" in str(client.get(f"/v1/plans/{pid}/export/trtllm").json())
    torch_stages = client.get(f"/v1/plans/{pid}/export/torch").json()
    assert torch_stages[0][0] == "model.embed_tokens"
    assert client.get(f"/v1/plans/{pid}/export/json").json()["schema_version"] == 1
    assert client.get(f"/v1/plans/{pid}/export/onnx").status_code == 422
    assert client.get("/v1/plans/nope/export/vllm").status_code == 404


def test_errors_name_field_value_rule(client: TestClient) -> None:
    r = client.post("/v1/plans", json={**BODY, "gpus": "4xZ999", "concurrency": 0, "colour": "red"})
    assert r.status_code == 422
    fields = {d["field"]: d for d in r.json()["detail"]}
    assert set(fields) == {"gpus", "concurrency", "colour"}
    assert fields["concurrency"]["value"] == 0 and "greater than or equal to 1" in fields["concurrency"]["message"]
    assert "unknown GPU kind" in fields["gpus"]["message"]
    r = client.post("/v1/plans", json={"model": "llama-3.1-70b", "gpus": "1xL4"})
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["field"] == "gpus" and "does not fit" in d["message"]
    assert d["needed_bytes"] > d["available_bytes"] > 0
    r = client.post("/v1/plans", json={**BODY, "profile": "/etc/passwd"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "profile"
    assert "not read over HTTP" in r.json()["detail"][0]["message"]
    r = client.post("/v1/plans", json={**BODY, "model": "/etc/hostname"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "model"
    r = client.post("/v1/plans", json={**BODY, "tp": 3})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "tp"
    r = client.post("/v1/plans", json={**BODY, "gpus": "2000xH100"})
    assert r.status_code == 422 and "limit" in r.json()["detail"][0]["message"]
    r = client.post("/v1/plans", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400  # unparseable: malformed syntax, not a rule broken
    r = client.post("/v1/plans", json=[1, 2])
    assert r.status_code == 422
    for path in ("/v1/plans/abc", "/v1/profiles/abc", "/v1/jobs/abc", "/v1/plans/abc/measurements"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"][0]["value"] == "abc", path


def test_delete_plan(client: TestClient) -> None:
    pid = _plan(client, pp=2, tp=1)["id"]
    rows = [{"stage": 0, "phase": "decode", "compute_s": 0.004, "wait_s": 0.001, "tokens": 32}]
    assert client.post(f"/v1/plans/{pid}/measurements", json={"rows": rows}).status_code == 201
    r = client.delete(f"/v1/plans/{pid}")
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "force"
    assert client.delete(f"/v1/plans/{pid}", params={"force": True}).status_code == 204
    assert client.get(f"/v1/plans/{pid}").status_code == 404
    assert client.delete(f"/v1/plans/{pid}").status_code == 404


def test_measurements(client: TestClient) -> None:
    pid = _plan(client, pp=2, tp=1)["id"]
    rows = [
        {
            "stage": k,
            "phase": "prefill",
            "compute_s": 0.05,
            "wait_s": 0.0,
            "bytes_sent": 4096,
            "peak_bytes": 123,
            "tokens": 2048,
            "micro_batch_size": 1,
        }
        for k in range(2)
    ]
    r = client.post(f"/v1/plans/{pid}/measurements", json={"run_id": "run-1", "rows": rows})
    assert r.status_code == 201, r.text
    assert r.json()["stored"] == 2 and {m["run_id"] for m in r.json()["data"]} == {"run-1"}
    got = client.get(f"/v1/plans/{pid}/measurements").json()["data"]
    assert [m["stage"] for m in got] == [0, 1] and got[0]["bytes_sent"] == 4096
    assert client.get(f"/v1/plans/{pid}/measurements", params={"run_id": "x"}).json()["data"] == []
    r = client.post(f"/v1/plans/{pid}/measurements", json={"rows": [{**rows[0], "stage": 2}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "stage"
    r = client.post(f"/v1/plans/{pid}/measurements", json={"rows": [{**rows[0], "phase": "train"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "rows.0.phase"
    assert client.post("/v1/plans/nope/measurements", json={"rows": rows}).status_code == 404


def test_profiles(client: TestClient) -> None:
    prof = analytic_profile(model_spec("llama-3.1-8b"))
    body = prof.model_dump(mode="json")
    r = client.post("/v1/profiles", json=body)
    assert r.status_code == 201 and r.json()["id"] == prof.profile_id
    assert client.post("/v1/profiles", json=body).status_code == 200
    other = {**body, "provenance": {**body["provenance"], "note": "changed"}}
    r = client.post("/v1/profiles", json=other)
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "profile"
    got = client.get(f"/v1/profiles/{prof.profile_id}").json()
    assert got["profile"] == body
    assert [p["id"] for p in client.get("/v1/profiles", params={"model": "llama-3.1-8b"}).json()] == [prof.profile_id]
    r = client.post("/v1/plans", json={**BODY, "profile": prof.profile_id})
    assert r.status_code == 201
    assert r.json()["plan"]["provenance"]["profile_id"] == prof.profile_id
    r = client.post("/v1/profiles", json={**body, "schema_version": 7})
    assert r.status_code == 422
    r = client.post("/v1/plans", json={**BODY, "weight_dtype": "fp8", "profile": prof.profile_id})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "weight_dtype"


def test_async_job(client: TestClient) -> None:
    r = client.post("/v1/plans", params={"mode": "async"}, json={**BODY, "gpus": "8xH100"})
    assert r.status_code == 202
    job = r.json()
    deadline = time.monotonic() + 30
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.02)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "done" and job["http_status"] == 201
    assert client.get(f"/v1/plans/{job['plan_id']}").status_code == 200
    r = client.post("/v1/plans", params={"mode": "async"}, json={"model": "llama-3.1-70b", "gpus": "1xL4"})
    job = r.json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.02)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "failed" and job["http_status"] == 422
    assert job["error"]["detail"][0]["needed_bytes"] > 0
    assert client.post("/v1/plans", params={"mode": "later"}, json=BODY).status_code == 422


@pytest.mark.parametrize("path", ["/v1/nothing", "/v2/plans"])
def test_unknown_paths_are_404_in_the_error_shape(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404 and "detail" in r.json()


def test_model_level_rules_name_their_field(client: TestClient) -> None:
    r = client.post("/v1/plans", json={**BODY, "gpus": "3xH100", "nodes": 2})
    assert r.status_code == 422
    item = r.json()["detail"][0]
    assert item["field"] == "nodes" and item["message"].startswith("nodes: ") and item["value"] == 2


def test_internal_error_is_500_with_a_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_a: object, **_kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(repo, "get_plan", broken)
    with caplog.at_level(logging.ERROR, logger="ppplan.api"):
        r = client.get("/v1/plans/abc", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 500 and r.headers["X-Request-ID"] == "req-123"
    body = r.json()
    assert body["request_id"] == "req-123"
    assert body["detail"][0]["field"] == "request" and "req-123" in body["detail"][0]["message"]
    logged = [rec for rec in caplog.records if "req-123" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "boom" in str(logged[0].exc_info[1])
    r = client.get("/v1/plans/abc")  # no id given: the server makes one
    assert r.status_code == 500 and r.json()["request_id"] == r.headers["X-Request-ID"] != ""


def test_contract_400_405_and_documented_answers(client: TestClient) -> None:
    r = client.post("/v1/plans", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "request"
    r = client.delete("/v1/plans")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    spec = client.get("/openapi.json").json()
    create = spec["paths"]["/v1/plans"]["post"]["responses"]
    assert {"400", "401", "413", "422", "429", "503"} <= set(create)
    assert create["201"]["links"]["GetPlan"] == {
        "operationId": "get_plan",
        "parameters": {"plan_id": "$response.body#/id"},
        "description": "the plan just made",
    }
    assert {"ExportPlan", "DeletePlan", "ListMeasurements"} <= set(create["201"]["links"])
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"get_plan", "export_plan", "delete_plan", "list_measurements", "get_job"} <= ops
    for path, methods in spec["paths"].items():
        if path.startswith("/v1/"):
            for op in methods.values():
                assert {"401", "503"} <= set(op["responses"]), path
                assert op["security"] == [{"bearer": []}, {}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
