"""Store commands on the ``ppplan`` CLI: ``plans list|show|export|delete``, ``serve`` and
``db upgrade|downgrade|current``. Imported by :mod:`api.cli` at start-up."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ppplan.api.cli.common import console, err_console, fail, user_errors, write_json
from ppplan.api.cli.plan import print_plan
from ppplan.api.redact import redact
from ppplan.api.security import serve_security
from ppplan.api.settings import get_settings
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import get_gpu
from ppplan.partitioner.exports import EXPORT_FORMATS, render_export

__all__ = ["commands", "db_app", "plans_app"]

plans_app = typer.Typer(help="Stored plans (the local SQLite file, or PPPLAN_DATABASE_URL).", no_args_is_help=True)
db_app = typer.Typer(help="The store's schema (Alembic migrations).", no_args_is_help=True)
commands = typer.Typer()
commands.add_typer(plans_app, name="plans")
commands.add_typer(db_app, name="db")


def _url() -> str:
    from ppplan.api.store_lookup import database_url  # lazy: the CLI starts without SQLAlchemy

    return database_url()


@plans_app.command("list")
@user_errors
def plans_list(
    model: Annotated[str | None, typer.Option(help="only plans of this model")] = None,
    gpu: Annotated[str | None, typer.Option(help="only plans on this GPU kind (catalog name or alias)")] = None,
    objective: Annotated[str | None, typer.Option(help="throughput, latency or min-gpus")] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="created at or after (ISO date/time, UTC)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="rows to show")] = 50,
    offset: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="rows to skip")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List stored plans, newest first."""
    from ppplan.api.store import repo  # lazy: the CLI starts without SQLAlchemy
    from ppplan.api.store.engine import session_scope  # lazy: the CLI starts without SQLAlchemy

    if objective is not None and objective not in ("throughput", "latency", "min-gpus"):
        fail(f"objective: {objective!r} is not one of throughput, latency, min-gpus")
    flt = repo.PlanFilter(
        model=model,
        gpu=get_gpu(gpu, field="gpu").name if gpu else None,
        objective=objective,
        created_after=since.replace(tzinfo=since.tzinfo or dt.UTC) if since else None,
    )
    with session_scope(_url()) as s:
        rows, total = repo.list_plans(s, flt, limit=limit, offset=offset)
    if as_json:
        from ppplan.api.schemas import PlanSummary  # lazy: the CLI starts without SQLAlchemy

        print(
            json.dumps(
                {"data": [PlanSummary.model_validate(r).model_dump(mode="json") for r in rows], "count": total},
                indent=1,
            )
        )
        return
    t = Table(title=f"stored plans ({len(rows)} of {total})")
    for col in ("id", "created (UTC)", "model", "GPUs", "objective", "TP×PP×R", "partition", "tok/s", "TPOT ms"):
        t.add_column(col, justify="right" if col in ("tok/s", "TPOT ms") else "left")
    for r in rows:
        t.add_row(
            r.id,
            r.created.strftime("%Y-%m-%d %H:%M:%S"),
            r.model_name,
            f"{r.gpu_count}×{r.gpu_kind}",
            r.objective,
            f"{r.tp}×{r.pp}×{r.replicas}",
            ",".join(map(str, r.body.get("partition", []))),
            f"{r.throughput_tokens_per_s:.0f}",
            f"{r.tpot_ms:.2f}",
        )
    console.print(t)


def _load(plan_id: str) -> dict[str, object]:
    from ppplan.api.store import repo  # lazy: the CLI starts without SQLAlchemy
    from ppplan.api.store.engine import session_scope  # lazy: the CLI starts without SQLAlchemy

    with session_scope(_url()) as s:
        row = repo.get_plan(s, plan_id)
        if row is None:
            fail(f"plan_id: no stored plan with id {plan_id!r} (see `ppplan plans list`)")
        return dict(row.body)  # type: ignore[union-attr]


@plans_app.command("show")
@user_errors
def plans_show(
    plan_id: Annotated[str, typer.Argument(help="plan id (from `ppplan plans list`)")],
    as_json: Annotated[bool, typer.Option("--json", help="print Plan JSON v1")] = False,
    svg: Annotated[
        Path | None, typer.Option("--svg", metavar="DIR", help="write one SVG per chart into DIR (created if missing)")
    ] = None,
) -> None:
    """Show a stored plan."""
    d = _load(plan_id)
    if svg is not None:
        for path in _write_svgs(d, svg):
            console.print(str(path), highlight=False, soft_wrap=True)
        return
    if as_json:
        print(json.dumps(d, indent=1))
        return
    print_plan(d, plan_id)


def _write_svgs(plan: dict[str, object], folder: Path) -> list[Path]:
    """Write ``memory.svg``, ``timeline.svg``, ``tradeoff.svg`` and ``layers.svg`` into ``folder``.

    Raises:
        PpplanError: the folder cannot be made or written (field ``svg``).
    """
    from ppplan.api.web import render_svgs  # lazy: only --svg draws

    svgs = render_svgs(plan)  # before touching the disk: a plan that cannot be drawn leaves nothing behind
    if folder.exists() and not folder.is_dir():
        raise PpplanError("svg", str(folder), rule="must be a folder, not a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PpplanError("svg", str(folder), rule=f"cannot create the folder ({exc.strerror})") from None
    written = []
    for name, text in svgs.items():
        path = folder / f"{name}.svg"
        write_json(path, text, field="svg")  # atomic: a failed write leaves no partial file
        written.append(path)
    return written


@plans_app.command("export")
@user_errors
def plans_export(
    plan_id: Annotated[str, typer.Argument(help="plan id")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=", ".join(EXPORT_FORMATS))] = "vllm",
) -> None:
    """Print a stored plan's engine settings."""
    if fmt not in EXPORT_FORMATS:
        fail(f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    print(render_export(_load(plan_id), fmt))


@plans_app.command("delete")
@user_errors
def plans_delete(
    plan_id: Annotated[str, typer.Argument(help="plan id")],
    force: Annotated[bool, typer.Option(help="also delete the plan's measurements")] = False,
) -> None:
    """Delete a stored plan."""
    from ppplan.api.store import repo  # lazy: the CLI starts without SQLAlchemy
    from ppplan.api.store.engine import session_scope  # lazy: the CLI starts without SQLAlchemy

    with session_scope(_url()) as s:
        try:
            done = repo.delete_plan(s, plan_id, force=force)
        except repo.Conflict as exc:
            fail(str(exc))
    if done is None:
        fail(f"plan_id: no stored plan with id {plan_id!r}")
    console.print(f"deleted {plan_id}")


@commands.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    token_file: Annotated[
        Path | None,
        typer.Option(help="file holding the bearer token every /v1 request must carry (or PPPLAN_API_TOKEN)"),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names to answer, comma-separated (or PPPLAN_ALLOWED_HOSTS); default loopback and --host"
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="listen on a non-loopback --host without a token")
    ] = False,
) -> None:
    """Run the planning service (REST API under /v1, docs at /docs) on the configured store.

    A non-loopback ``--host`` needs a token (``PPPLAN_API_TOKEN`` or ``--token-file``) unless
    ``--insecure-no-auth`` is given. The default store is created on its first run; any other must be at the
    schema head already (``ppplan db upgrade``), checked here before the workers start.
    """
    import uvicorn  # lazy: only the service needs it

    settings = get_settings()
    security = serve_security(
        host,
        env_token=settings.api_token.get_secret_value() if settings.api_token is not None else None,
        env_allowed_hosts=settings.allowed_hosts,
        token_file=token_file,
        allowed_hosts=allowed_hosts,
        insecure_no_auth=insecure_no_auth,
    )
    if security.warning is not None:
        err_console.print(f"[bold yellow]warning:[/] {escape(security.warning)}", highlight=False, soft_wrap=True)
    if workers > 1 and settings.database_url.split(":", 1)[0].split("+", 1)[0] not in ("postgresql", "postgres"):
        # SQLite jobs run in the server process's threads and are resumed by it at start; with several
        # processes a restarted one could not tell a dead sibling's job from a live one
        fail(
            f"workers: {workers} worker processes need a PostgreSQL store (PPPLAN_DATABASE_URL=postgresql+psycopg://…, "
            "jobs then go through its queue); on SQLite one process runs the jobs: use --workers 1"
        )
    url = _url()  # once here, so several workers do not race on creating the default store
    console.print(f"ppplan service on http://{host}:{port}/docs — store {redact(url)}", highlight=False)
    with security.environment():  # the workers build their settings (token, allowed hosts) from it
        uvicorn.run(
            "ppplan.api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level
        )


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Bring the store's schema to REVISION (default the newest)."""
    from ppplan.api.store import migrate  # lazy: the CLI starts without SQLAlchemy

    url = get_settings().database_url
    migrate.upgrade(url, revision)
    console.print(f"{migrate.redact(url)} at revision {migrate.current(url)}", highlight=False)


@db_app.command("downgrade")
@user_errors
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision ('base' drops every table)")]) -> None:
    """Take the store's schema back to REVISION."""
    from ppplan.api.store import migrate  # lazy: the CLI starts without SQLAlchemy

    url = get_settings().database_url
    migrate.downgrade(url, revision)
    console.print(f"{migrate.redact(url)} at revision {migrate.current(url) or 'base (empty)'}", highlight=False)


@db_app.command("current")
@user_errors
def db_current() -> None:
    """Print the store's URL and schema revision."""
    from ppplan.api.store import migrate  # lazy: the CLI starts without SQLAlchemy

    url = get_settings().database_url
    cur = migrate.current(url)
    console.print(
        f"{migrate.redact(url)} at revision {cur or 'base (empty)'}; head is {migrate.head()}", highlight=False
    )
