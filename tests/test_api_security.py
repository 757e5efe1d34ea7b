"""The service's security: bearer tokens on /v1, trusted Host headers (DNS rebinding), ``serve``'s refusal to
listen beyond loopback without a token, presets before paths and no server paths in answers, and database
passwords redacted wherever a URL is shown."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.cli import app as cli_app
from ppplan.api.redact import redact
from ppplan.api.schemas import ErrorBody
from ppplan.api.security import default_allowed_hosts, host_allowed, is_loopback
from ppplan.api.settings import Settings
from ppplan.api.store.engine import dispose_engine, make_engine
from ppplan.api.store.migrate import upgrade
from ppplan.core.errors import PpplanError
from ppplan.profiler.configs import load_model_config

TOKEN = "tok-0123456789abcdef"
BODY = {"model": "llama-3.1-8b", "gpus": "4xH100"}
LOOPBACK = "http://127.0.0.1"  # the clients' base URL: a loopback name the default allowed hosts hold
ENV_KEYS = ("PPPLAN_API_TOKEN", "PPPLAN_ALLOWED_HOSTS", "PPPLAN_ALLOW_MODEL_PATHS")

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token or host list from the caller's environment; whatever ``serve`` sets is undone afterwards."""
    for key in ENV_KEYS:
        monkeypatch.setenv(key, "")  # records the caller's value (or its absence) for the teardown
        monkeypatch.delenv(key)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'sec.db'}"
    upgrade(url)
    yield url
    dispose_engine(url)


def _client(url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(database_url=url, **settings)), base_url=LOOPBACK)


def _error(r: Any, status: int, field: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = ErrorBody.model_validate(r.json())
    assert body.detail[0].field == field, r.text
    return body.detail[0].model_dump()


# --- tokens ------------------------------------------------------------------------------------------------


def test_token_guards_every_v1_route(store: str) -> None:
    with _client(store, api_token=TOKEN) as c:
        r = c.post("/v1/plans", json=BODY)
        item = _error(r, 401, "authorization")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in item["message"]
        r = c.post("/v1/plans", json=BODY, headers={"Authorization": "Bearer wrong-token"})
        _error(r, 401, "authorization")
        assert r.headers["www-authenticate"].startswith("Bearer") and "wrong-token" not in r.text
        for bad in (f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", "Bearer  "):
            assert c.post("/v1/plans", json=BODY, headers={"Authorization": bad}).status_code == 401, bad
        # before any body is read or any route matched: a bad body and an unknown path are 401 too
        assert c.post("/v1/plans", content=b"{not json").status_code == 401
        assert c.get("/v1/no-such-route").status_code == 401
        assert c.delete("/v1/plans/abc", params={"force": "true"}).status_code == 401

        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/v1/plans", json=BODY, headers=auth).status_code == 201
        assert c.post("/v1/plans", json=BODY, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
        assert c.get("/v1/plans", headers=auth).status_code == 200
        # open without the token: liveness, readiness (when the app has it) and the docs
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code != 401
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_no_token_configured_means_open(store: str) -> None:
    with _client(store) as c:
        assert c.post("/v1/plans", json=BODY).status_code == 201


def test_token_settings_refuse_empty_and_unsendable_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPPLAN_API_TOKEN", "  ")
    with pytest.raises(ValidationError, match="api_token"):
        Settings()
    monkeypatch.setenv("PPPLAN_API_TOKEN", "has space")
    with pytest.raises(ValidationError, match="api_token"):
        Settings()
    monkeypatch.setenv("PPPLAN_API_TOKEN", f" {TOKEN}\n")
    token = Settings().api_token
    assert token is not None and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(Settings())  # a SecretStr: not in logs or reprs


# --- trusted hosts -----------------------------------------------------------------------------------------


def test_foreign_host_header_is_rejected(store: str) -> None:
    with _client(store) as c:
        for path in ("/v1/plans", "/healthz"):
            item = _error(c.get(path, headers={"Host": "evil.example"}), 400, "host")
            assert item["value"] == "evil.example" and "--allowed-hosts" in item["message"]
        for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "[::1]"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", "[::2]:80", "", "a b"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 400, host


def test_host_check_comes_before_the_token(store: str) -> None:
    with _client(store, api_token=TOKEN) as c:
        r = c.get("/v1/plans", headers={"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"})
        _error(r, 400, "host")


def test_allowed_hosts_setting(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPPLAN_ALLOWED_HOSTS", " plans.example , *.corp.example,")
    assert Settings().allowed_hosts == ("plans.example", "*.corp.example")
    with TestClient(create_app(Settings(database_url=store)), base_url="http://plans.example") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "a.corp.example:443"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "corp.example"}).status_code == 400
        assert c.get("/healthz", headers={"Host": "localhost"}).status_code == 400  # the list replaces the default
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_missing_or_repeated_host_header_is_rejected() -> None:
    """Raw ASGI scopes: HTTP/1.0 without ``Host``, or two ``Host`` headers, never reach the app."""
    import asyncio

    from ppplan.api.security_middleware import SecurityMiddleware

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    guard = SecurityMiddleware(app, allowed_hosts=("localhost",), token=None, open_paths=())
    for headers in ([], [(b"host", b"localhost"), (b"host", b"evil.example")]):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": headers, "root_path": ""}
        asyncio.run(guard(scope, receive, send))
        assert sent[0]["status"] == 400
        assert f"{len(headers)} Host headers" in json.loads(sent[1]["body"])["detail"][0]["message"]
    asyncio.run(guard({"type": "http", "path": "/ok", "headers": [(b"host", b"localhost:1")]}, receive, send))
    assert reached == ["/ok"]


def test_host_rules() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "", "128.0.0.1"))
    assert default_allowed_hosts("0.0.0.0") == default_allowed_hosts("::") == default_allowed_hosts(None)
    assert "10.1.2.3" in default_allowed_hosts("10.1.2.3") and "plans.example" in default_allowed_hosts("plans.example")
    assert host_allowed("*", ("*",)) and host_allowed("anything.example", ("*",))
    assert not host_allowed("evil.example", default_allowed_hosts(None))


# --- serve -------------------------------------------------------------------------------------------------


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``uvicorn.run`` replaced: nothing listens; each call records its arguments and the environment the
    workers would inherit."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def fake_run(app: str, **kw: Any) -> None:
        calls.append({"app": app, **kw, "env": {k: os.environ.get(k) for k in ENV_KEYS}})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def _serve(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(cli_app, ["serve", *args])
    return res.exit_code, res.stdout, res.stderr


def test_serve_refuses_a_public_host_without_a_token(uvicorn_calls: list[dict[str, Any]]) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        code, out, err = _serve("--host", host)
        assert code == 2, out + err
        assert len(err.strip().splitlines()) == 1 and "--insecure-no-auth" in err and "PPPLAN_API_TOKEN" in err
        assert "Traceback" not in err
    assert uvicorn_calls == []


def test_serve_insecure_no_auth_warns_and_proceeds(uvicorn_calls: list[dict[str, Any]]) -> None:
    code, out, err = _serve("--host", "0.0.0.0", "--insecure-no-auth")
    assert code == 0, out + err
    assert "warning" in err.lower() and "no token" in err.lower()
    (call,) = uvicorn_calls
    assert call["host"] == "0.0.0.0" and call["env"]["PPPLAN_API_TOKEN"] is None
    assert set(call["env"]["PPPLAN_ALLOWED_HOSTS"].split(",")) == set(default_allowed_hosts(None))
    assert not any(key in os.environ for key in ENV_KEYS)  # set for the workers only, then restored


def test_serve_loopback_needs_no_token(uvicorn_calls: list[dict[str, Any]]) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        code, out, err = _serve("--host", host)
        assert code == 0, out + err
        assert "warning" not in err.lower()
    assert len(uvicorn_calls) == 4


def test_serve_token_file(tmp_path: Path, uvicorn_calls: list[dict[str, Any]], store: str) -> None:
    f = tmp_path / "token"
    f.write_text(f"{TOKEN}\n")
    code, out, err = _serve("--host", "10.1.2.3", "--token-file", str(f))
    assert code == 0, out + err
    (call,) = uvicorn_calls
    env = call["env"]
    assert env["PPPLAN_API_TOKEN"] == TOKEN and "10.1.2.3" in env["PPPLAN_ALLOWED_HOSTS"].split(",")
    assert TOKEN not in out + err
    # the app the workers build from that environment asks for the token
    os.environ.update({k: v for k, v in env.items() if v is not None})
    with TestClient(create_app(Settings(database_url=store)), base_url="http://10.1.2.3:8000") as c:
        assert c.get("/v1/plans").status_code == 401
        assert c.get("/v1/plans", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 400

    f.write_text(" \n")
    code, out, err = _serve("--token-file", str(f))
    assert code == 2 and "token_file" in err and "empty" in err, out + err
    code, out, err = _serve("--token-file", str(tmp_path / "missing"))
    assert code == 2 and "token_file" in err, out + err
    assert len(uvicorn_calls) == 1


def test_serve_token_from_env_and_allowed_hosts(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("PPPLAN_API_TOKEN", TOKEN)
    code, out, err = _serve("--host", "0.0.0.0", "--allowed-hosts", "plans.example,10.0.0.5")
    assert code == 0, out + err
    assert uvicorn_calls[0]["env"]["PPPLAN_ALLOWED_HOSTS"] == "plans.example,10.0.0.5"
    monkeypatch.setenv("PPPLAN_API_TOKEN", "")
    code, out, err = _serve()
    assert code == 2 and "api_token" in err and len(uvicorn_calls) == 1, out + err


def test_serve_start_line_hides_the_password(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    import ppplan.api.cli.store as cli_store

    monkeypatch.setattr(cli_store, "_url", lambda: "postgresql+psycopg://ppplan:s3cret@db.example/ppplan")
    code, out, err = _serve()
    assert code == 0 and "s3cret" not in out + err and "ppplan:***@db.example" in out, out + err


# --- presets before paths, no server paths in answers ---------------------------------------------------------


def _preset_impostor(folder: Path) -> None:
    """``folder/llama-3.1-8b/config.json``: a valid config that differs from the preset (8 layers)."""
    raw = dict(load_model_config("llama-3.1-8b").raw)
    raw["num_hidden_layers"] = 8
    (folder / "llama-3.1-8b").mkdir()
    (folder / "llama-3.1-8b" / "config.json").write_text(json.dumps(raw))


def test_a_folder_named_like_a_preset_does_not_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    with _client(store) as c:
        genuine = c.post("/v1/plans", json=BODY).json()
    _preset_impostor(tmp_path)
    monkeypatch.chdir(tmp_path)
    for allow in (False, True):
        url = f"sqlite:///{tmp_path / f'other{allow}.db'}"
        upgrade(url)
        try:
            with _client(url, allow_model_paths=allow) as c:
                r = c.post("/v1/plans", json=BODY)
        finally:
            dispose_engine(url)
        assert r.status_code == 201, r.text
        plan = r.json()["plan"]
        assert plan["model_source"] == "preset:llama-3.1-8b"
        assert plan["model"]["config_hash"] == genuine["plan"]["model"]["config_hash"]
        assert r.json()["id"] == genuine["id"] and plan["partition"] == genuine["plan"]["partition"]
        assert str(tmp_path) not in r.text


def test_model_paths_answer_a_hash_not_the_path(tmp_path: Path, store: str) -> None:
    _preset_impostor(tmp_path)
    cfg_dir = tmp_path / "llama-3.1-8b"
    with _client(store) as c:  # model paths are off by default
        _error(c.post("/v1/plans", json={**BODY, "model": str(cfg_dir)}), 422, "model")
    with _client(store, allow_model_paths=True) as c:
        r = c.post("/v1/plans", json={**BODY, "model": str(cfg_dir)})
        assert r.status_code == 201, r.text
        chash = load_model_config(str(cfg_dir)).config_hash
        plan = r.json()["plan"]
        assert plan["model_source"] == f"path:{chash}" and plan["request"]["model"] == f"path:{chash}"
        assert str(tmp_path) not in r.text
        pid = r.json()["id"]
        for path in (f"/v1/plans/{pid}", "/v1/plans", *(f"/v1/plans/{pid}/export/{f}" for f in ("vllm", "json"))):
            got = c.get(path)
            assert got.status_code == 200 and str(tmp_path) not in got.text, path
        # the same config under another path is the same plan: identity is the content
        other = tmp_path / "copy"
        other.mkdir()
        (other / "config.json").write_bytes((cfg_dir / "config.json").read_bytes())
        again = c.post("/v1/plans", json={**BODY, "model": str(other / "config.json")})
        assert again.status_code == 200 and again.json()["id"] == pid
        job = c.post("/v1/plans", json={**BODY, "model": str(other), "gpus": "2xH100"}, params={"mode": "async"})
        assert job.status_code == 202 and str(tmp_path) not in job.text


# --- passwords -----------------------------------------------------------------------------------------------


def test_engine_error_hides_the_password() -> None:
    for url in ("postgresql://u:s3cret@h:notaport/db", "postgresql+psycopg://u:s3cret@db.example:5x/db"):
        with pytest.raises(PpplanError) as info:
            make_engine(url)
        assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value.value), info.value
        assert "u:***@" in str(info.value) and info.value.field == "database_url"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://ppplan:s3cret@127.0.0.1:1/ppplan", "postgresql+psycopg://ppplan:***@127.0.0.1:1/ppplan"),
        ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
        ("postgresql://u:s3c@r:et@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3/cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?sslmode=require&password=s3cret", "postgresql://u@h/db?sslmode=require&password=***"),
        ("cannot open 'mysql://u:s3cret@h/db' (x)", "cannot open 'mysql://u:***@h/db' (x)"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_cli_plan_bodies_lose_their_path_in_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan the CLI stored from a config file keeps its path for ``ppplan run``; ``public_plan_body`` (for
    the HTTP answers) names it by the config hash instead, everywhere the path was copied."""
    from ppplan.api.service import public_plan_body

    _preset_impostor(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "plan.json"
    res = runner.invoke(cli_app, ["plan", "./llama-3.1-8b", "--gpus", "2xH100", "--no-save", "--json", str(out)])
    assert res.exit_code == 0, res.stdout + res.stderr
    body = json.loads(out.read_text())
    assert str(tmp_path) in json.dumps(body)  # the CLI's own file keeps the path
    public = public_plan_body(body)
    ident = f"path:{body['model']['config_hash']}"
    assert str(tmp_path) not in json.dumps(public)
    assert public["model_source"] == ident and public["request"]["model"] == ident
    assert ident in public["exports"]["vllm"]["command"]
    preset = {**body, "model_source": "preset:llama-3.1-8b"}
    assert public_plan_body(preset) == preset
