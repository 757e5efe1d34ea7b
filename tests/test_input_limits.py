"""Input limits, validation and normalisation: file and body size caps, truncated echoes, profile
bounds on every path that accepts a profile, control characters in ids and filters, and one id for
every spelling of one plan (issue 10, item 2)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.cli import app as cli_app
from ppplan.api.settings import Settings
from ppplan.api.store import repo
from ppplan.api.store.engine import session_scope
from ppplan.api.store.models import ProfileRow
from ppplan.core.errors import PpplanError
from ppplan.core.profile import Profile, ProfileError, parse_profile
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.configs import ModelConfigError, load_model_config
from ppplan.profiler.profile_file import load_profile

BIG = 10**400  # parses as a Python int; as a float it is inf (OverflowError when converted)


def _profile_json() -> dict[str, Any]:
    return analytic_profile(model_spec("tiny-llama"), "bf16", "bf16").model_dump(mode="json")


# ---------------------------------------------------------------------------------------------- files


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as fh:  # sparse: the size on paper, nothing on disk
        fh.truncate(size)
    return path


def test_profile_and_config_files_are_capped_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a regular file"):
        load_profile("/dev/zero")
    big = _sparse(tmp_path / "big.json", 3 * 10**9)
    t0 = time.monotonic()
    with pytest.raises(ProfileError, match=r"3,000,000,000 bytes, above the .*-byte limit"):
        load_profile(big)
    with pytest.raises(ModelConfigError, match=r"3,000,000,000 bytes, above the .*-byte limit"):
        load_model_config(str(big))
    folder = tmp_path / "huge-model"
    folder.mkdir()
    _sparse(folder / "config.json", 3 * 10**9)
    with pytest.raises(ModelConfigError, match=r"above the .*-byte limit"):
        load_model_config(str(folder))
    with pytest.raises(ModelConfigError, match="not a regular file"):
        load_model_config("/dev/zero")
    assert time.monotonic() - t0 < 5  # refused by size, not read


def test_cli_profile_dev_zero_is_one_line() -> None:
    res = CliRunner().invoke(cli_app, ["plan", "tiny-llama", "--gpus", "1xL4", "--profile", "/dev/zero", "--no-save"])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "not a regular file" in res.stderr


def test_unreadable_json_is_a_user_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
    long_int = '{"schema_version": 1, "x": 1' + "0" * 5000 + "}"  # ValueError: above the int digit limit
    for text in (deep, long_int):
        with pytest.raises(ProfileError, match="not valid JSON"):
            parse_profile(text, "p.json")
        cfg = tmp_path / "config.json"
        cfg.write_text(text)
        with pytest.raises(ModelConfigError, match="not a readable JSON config"):
            load_model_config(str(cfg))


# ---------------------------------------------------------------------------------------------- body size, echoes


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[TestClient]:
    """A service on a fresh SQLite store (the app factory, as tests/test_api.py uses it)."""
    from ppplan.api.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'limits.db'}"
    upgrade(url)
    with TestClient(
        create_app(Settings(database_url=url)), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as c:
        yield c


def _post_raw(client: TestClient, path: str, body: bytes | Iterator[bytes]) -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def test_body_above_the_limit_is_413_before_parsing(sqlite_client: TestClient) -> None:
    body = b'{"model": "' + b"a" * (9 * 1024**2) + b'", "gpus": "1xL4"}'  # above the 8 MiB default
    r = _post_raw(sqlite_client, "/v1/plans", body)
    assert r.status_code == 413
    item = r.json()["detail"][0]
    assert item["field"] == "request" and "8,388,608-byte limit (PPPLAN_MAX_BODY_BYTES)" in item["message"]
    assert len(r.content) < 1000


def test_chunked_body_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppplan.api.store.migrate import upgrade

    monkeypatch.setenv("PPPLAN_MAX_BODY_BYTES", "1000")
    url = f"sqlite:///{tmp_path / 'chunked.db'}"
    upgrade(url)
    with TestClient(
        create_app(Settings(database_url=url)), base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as c:

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
            yield b'{"model": "tiny-llama", "gpus": "1xL4", "pad": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        r = _post_raw(c, "/v1/plans", chunks())
        assert r.status_code == 413 and "exceeds the 1,000-byte limit" in r.json()["detail"][0]["message"]
        small = iter([b'{"model": "tiny-llama", ', b'"gpus": "1xL4", "prompt_tokens": 128, "output_tokens": 64}'])
        assert _post_raw(c, "/v1/plans", small).status_code == 201  # a chunked body within the cap is served


def test_echoed_values_are_truncated(sqlite_client: TestClient) -> None:
    body = json.dumps({"model": "m" * 5_000_000, "gpus": "g" * 3_000_000}).encode()
    r = _post_raw(sqlite_client, "/v1/plans", body)
    assert r.status_code == 422 and len(r.content) < 5_000, len(r.content)
    for item in r.json()["detail"]:
        assert len(item["message"]) <= 2000 and len(item["value"]) <= 200
    r = _post_raw(
        sqlite_client, "/v1/plans", b'{"model": "tiny-llama", "gpus": "1xL4", "prompt_tokens": 1' + b"0" * 4000 + b"}"
    )
    assert r.status_code == 422 and len(r.content) < 2_000
    r = _post_raw(sqlite_client, "/v1/plans", b'{"model": "tiny-llama", "gpus": "1xL4", "max_tpot_ms": NaN}')
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "max_tpot_ms"  # valid JSON, no NaN echoed
    r = _post_raw(sqlite_client, "/v1/plans", b'{"model": "\\ud800x", "gpus": "1xL4"}')  # an unpaired surrogate
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "model"


def test_echo_is_json_safe() -> None:
    from ppplan.api.limits import echo

    assert echo("x" * 1000).endswith("…") and len(echo("x" * 1000)) == 200
    assert echo(float("inf")) == "inf" and echo(float("nan")) == "nan"
    assert echo(BIG).startswith("1000") and len(echo(BIG)) == 200
    assert echo(10**5000).startswith("an integer of about 5001 digits")
    assert echo({"a": [1, 2]}) == {"a": [1, 2]} and isinstance(echo(list(range(10_000))), str)
    assert echo("\ud800") == "?"


# ---------------------------------------------------------------------------------------------- profiles


def _bad_profiles() -> list[tuple[str, dict[str, Any], str]]:
    """(what, profile JSON, field the error names)."""
    out = []
    p = _profile_json()
    p["units"][1]["linear_flops_per_token"] = BIG
    out.append(("10^400 FLOPs", p, "units.1.linear_flops_per_token"))
    p = _profile_json()
    p["units"][1]["measured"] = [{"phase": "decode", "tokens": 1, "context": 1, "time_s": float("inf")}]
    out.append(("infinite time", p, "units.1.measured.0.time_s"))
    p = _profile_json()
    p["model"]["num_kv_heads"] = 0
    out.append(("zero KV heads", p, "model.num_kv_heads"))
    p = _profile_json()
    p["model"]["num_attention_heads"] = -4
    out.append(("negative heads", p, "model.num_attention_heads"))
    p = _profile_json()
    p["units"][1]["num_kv_heads"] = 0
    out.append(("attention without KV heads", p, "num_kv_heads"))
    p = _profile_json()
    p["units"][2]["weight_bytes"] = 10**16
    out.append(("10 PB of weights", p, "units.2.weight_bytes"))
    p = _profile_json()
    p["model"]["name"] = "tiny\x00llama"
    out.append(("a NUL byte", p, "model.name"))
    p = _profile_json()
    p["provenance"]["note"] = float("nan")
    out.append(("NaN in provenance", p, "provenance.note"))
    return out


@pytest.mark.parametrize(("what", "body", "field"), _bad_profiles(), ids=[b[0] for b in _bad_profiles()])
def test_bad_profiles_are_refused_in_files(tmp_path: Path, what: str, body: dict[str, Any], field: str) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps(body))  # NaN and Infinity as Python's json writes them
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        load_profile(f)
    res = CliRunner().invoke(cli_app, ["plan", "tiny-llama", "--gpus", "1xL4", "--profile", str(f), "--no-save"])
    assert res.exit_code == 2 and field in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


@pytest.mark.parametrize(("what", "body", "field"), _bad_profiles(), ids=[b[0] for b in _bad_profiles()])
def test_bad_profiles_are_refused_over_http(client: TestClient, what: str, body: dict[str, Any], field: str) -> None:
    r = client.post("/v1/profiles", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    item = r.json()["detail"][0]
    assert field in item["field"] or field in item["message"], item
    assert client.get("/v1/profiles").json() == []  # nothing stored


def test_stored_profile_is_checked_when_read_back(client: TestClient, db_url: str) -> None:
    good = Profile.model_validate(_profile_json())
    body = copy.deepcopy(good.model_dump(mode="json"))
    body["units"][1]["linear_flops_per_token"] = BIG  # as an older version or a hand edit left it
    with session_scope(db_url) as s:
        s.add(
            ProfileRow(
                id="0123456789abcdef",
                kind=good.kind,
                model_name=good.model.name,
                weight_dtype=good.weight_dtype,
                kv_dtype=good.kv_dtype,
                device=None,
                body_sha256="0" * 64,
                body=body,
                created=dt.datetime.now(dt.UTC).replace(tzinfo=None),
            )
        )
        s.commit()
    req = {"model": "tiny-llama", "gpus": "1xL4", "prompt_tokens": 128, "output_tokens": 64}
    r = client.post("/v1/plans", json={**req, "profile": "0123456789abcdef"})
    assert r.status_code == 422, r.text
    item = r.json()["detail"][0]
    assert item["field"] == "profile" and "units.1.linear_flops_per_token" in item["message"]
    with session_scope(db_url) as s, pytest.raises(ProfileError, match="stored profile 0123456789abcdef"):
        repo.get_profile(s, "0123456789abcdef")


def test_shipped_and_analytic_profiles_are_within_bounds() -> None:
    from ppplan.profiler.bundled import bundled_profile, bundled_profiles

    for name in bundled_profiles():
        Profile.model_validate(bundled_profile(name).model_dump(mode="json"))
    for model in ("deepseek-v3", "kimi-k2", "llama-3.1-405b", "gemma-3-27b", "gpt-oss-120b"):
        Profile.model_validate(analytic_profile(model_spec(model), "bf16", "bf16").model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------- ids and filters


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/v1/plans/%00abc", None, "plan_id"),
        ("DELETE", "/v1/plans/%00abc", None, "plan_id"),
        ("GET", "/v1/plans/%00abc/export/vllm", None, "plan_id"),
        ("GET", "/v1/plans/%00abc/measurements", None, "plan_id"),
        ("GET", "/v1/profiles/ab%00c", None, "profile_id"),
        ("GET", "/v1/plans", {"model": "\x00"}, "model"),
        ("GET", "/v1/plans", {"gpu": "H100\x00"}, "gpu"),
        ("GET", "/v1/profiles", {"model": "llama\x00"}, "model"),
        ("GET", "/v1/plans/abc/measurements", {"run_id": "r\x00"}, "run_id"),
        ("GET", "/v1/plans/a%0Ab", None, "plan_id"),
    ],
)
def test_control_characters_in_ids_and_filters_are_422(
    client: TestClient, method: str, path: str, params: dict[str, str] | None, field: str
) -> None:
    r = client.request(method, path, params=params)
    assert r.status_code == 422, r.text
    item = r.json()["detail"][0]
    assert item["field"] == field and "control characters" in item["message"]


def test_control_characters_in_bodies_are_422(client: TestClient) -> None:
    r = client.post("/v1/plans", json={"model": "tiny\x00llama", "gpus": "1xL4"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "model"
    r = client.post("/v1/plans", json={"model": "tiny-llama", "gpus": "1xL4", "profile": "ab\x00"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "profile"
    pid = client.post(
        "/v1/plans", json={"model": "tiny-llama", "gpus": "1xL4", "prompt_tokens": 128, "output_tokens": 64}
    ).json()["id"]
    row = {"stage": 0, "phase": "decode", "compute_s": 0.01, "tokens": 8}
    for body, field in (
        ({"run_id": "r\x00", "rows": [row]}, "run_id"),
        ({"rows": [{**row, "run_id": "r\x00"}]}, "rows.0.run_id"),
    ):
        r = client.post(f"/v1/plans/{pid}/measurements", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text
    assert client.get(f"/v1/plans/{pid}/measurements").json()["data"] == []


def test_over_long_ids_are_422(client: TestClient) -> None:
    r = client.get("/v1/plans/" + "a" * 65)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "plan_id"
    assert client.get("/v1/plans/" + "a" * 64).status_code == 404


def test_text_checks() -> None:
    from ppplan.core.text import check_text, normalize_name

    assert normalize_name(" ＬＬＡＭＡ-3.1-8B\n", "model") == "llama-3.1-8b"
    with pytest.raises(PpplanError, match=r"found U\+0000 at position 3"):
        check_text("abc\x00", "x")
    with pytest.raises(PpplanError, match=r"U\+D800"):
        check_text("\ud800", "x")
    assert check_text("ünïcødé ok", "x") == "ünïcødé ok"


# ---------------------------------------------------------------------------------------------- one plan, one id

SPELLINGS = [
    {"model": "LLAMA-3.1-8B", "gpus": "4xH100"},
    {"model": " llama-3.1-8b ", "gpus": "4xH100"},
    {"model": "llama-3.1-8b", "gpus": "4×H100"},
    {"model": "llama-3.1-8b", "gpus": "４xH100"},
    {"model": "ｌｌａｍａ-3.1-8b", "gpus": "4 x h100-sxm"},
    {"model": "meta-llama/Llama-3.1-8B", "gpus": "4*H100-SXM-80GB"},
]


def test_spellings_of_one_request_hash_alike() -> None:
    base = PlanRequest(model="llama-3.1-8b", gpus="4xH100")
    assert (base.model, base.gpus) == ("llama-3.1-8b", "4xH100-SXM-80GB")
    for body in SPELLINGS[:5]:
        req = PlanRequest.model_validate(body)
        assert repo.request_hash(req, None) == repo.request_hash(base, None), body
    assert PlanRequest(model="./My-Model", gpus="1xL4").model == "./My-Model"  # a path keeps its case


def test_spellings_of_one_request_are_one_plan(client: TestClient) -> None:
    first = client.post("/v1/plans", json={"model": "llama-3.1-8b", "gpus": "4xH100"})
    assert first.status_code == 201
    pid = first.json()["id"]
    assert first.json()["plan"]["request"]["model"] == "llama-3.1-8b"
    for body in SPELLINGS:
        r = client.post("/v1/plans", json=body)
        assert r.status_code == 200 and r.json()["id"] == pid, (body, r.text)
    assert client.get("/v1/plans").json()["count"] == 1
    assert client.get("/v1/plans", params={"model": "META-LLAMA/llama-3.1-8b"}).json()["count"] == 1


@pytest.mark.parametrize("gpus", ["٨xH100", "৪xH100", "８٨xH100"])
def test_non_ascii_digits_are_not_counts(gpus: str) -> None:
    with pytest.raises(ValueError, match="must be written in ASCII digits 0-9"):
        PlanRequest(model="llama-3.1-8b", gpus=gpus)


# ---------------------------------------------------------------------------------------------- numeric ranges


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("max_tpot_ms", 1e300, "less than or equal to 86400000"),
        ("max_ttft_ms", 0, "greater than 0"),
        ("prompt_tokens", 10**8, "less than or equal to 10000000"),
        ("concurrency", 0, "greater than or equal to 1"),
        ("gpu_memory_utilization", 1.5, "less than or equal to 1"),
        ("runtime_reserve_gib", -1, "greater than or equal to 0"),
    ],
)
def test_numeric_ranges_state_the_rule(sqlite_client: TestClient, field: str, value: float, rule: str) -> None:
    r = sqlite_client.post("/v1/plans", json={"model": "tiny-llama", "gpus": "1xL4", field: value})
    assert r.status_code == 422
    item = r.json()["detail"][0]
    assert item["field"] == field and rule in item["message"], item


def test_body_limit_is_documented(sqlite_client: TestClient) -> None:
    paths = sqlite_client.get("/openapi.json").json()["paths"]
    for path in ("/v1/plans", "/v1/profiles", "/v1/plans/{plan_id}/measurements"):
        assert "413" in paths[path]["post"]["responses"], path
