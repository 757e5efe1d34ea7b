"""The web pages of ``ppplan serve``: the planning form (``/``), the stored plans (``/plans``), one plan
(``/plans/{id}``, and ``/plans/{id}/view``, its fragment for the form's script) and the static assets.

Pages go through the same security middleware as ``/v1`` (Host check; the bearer token when one is set)
and carry a strict Content-Security-Policy. They are left out of the OpenAPI document: they are not API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ppplan.api.deps import SessionDep
from ppplan.api.limits import PlanIdPath
from ppplan.api.schemas import MeasurementPublic
from ppplan.api.service import public_plan_body
from ppplan.api.store import repo
from ppplan.api.web.pages import CSP, form_page, message_page, plan_page, plans_page
from ppplan.api.web.render import asset, render_plan_view
from ppplan.core.gpus import list_gpus
from ppplan.profiler.configs import list_presets

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ASSETS = {
    "ppplan.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "copy.js": "text/javascript; charset=utf-8",
}
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_GPU = "H100-SXM-80GB"


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def _choices() -> tuple[list[str], list[str]]:
    return [p.name for p in list_presets()], [g.name for g in list_gpus()]


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def index() -> HTMLResponse:
    """The planning form."""
    presets, gpus = _choices()
    return _html(form_page(presets, gpus, default_model=DEFAULT_MODEL, default_gpu=DEFAULT_GPU))


@router.api_route("/plans", methods=["GET", "HEAD"], response_class=HTMLResponse)
def plans() -> HTMLResponse:
    """Stored plans with filters (the rows come from ``GET /v1/plans``)."""
    return _html(plans_page(*_choices()))


def _view(session: Any, plan_id: str) -> str | None:
    row = repo.get_plan(session, plan_id)
    if row is None:
        return None
    rows = repo.get_measurements(session, plan_id) or []
    measured = [MeasurementPublic.model_validate(r).model_dump(mode="json") for r in rows]
    return render_plan_view(
        public_plan_body(row.body),
        plan_id=plan_id,
        measurements=measured,
        download_href=f"/v1/plans/{plan_id}/export/json",
    )


def _unknown(plan_id: str) -> HTMLResponse:
    return _html(message_page("No such plan", f"plan_id: no stored plan with id {plan_id!r}"), 404)


@router.api_route("/plans/{plan_id}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def plan(plan_id: PlanIdPath, session: SessionDep) -> HTMLResponse:
    """One stored plan: charts, settings, download, predicted vs measured."""
    view = _view(session, plan_id)
    return _unknown(plan_id) if view is None else _html(plan_page(view, plan_id))


@router.api_route("/plans/{plan_id}/view", methods=["GET", "HEAD"], response_class=HTMLResponse)
def plan_view(plan_id: PlanIdPath, session: SessionDep) -> HTMLResponse:
    """The plan view alone (an HTML fragment), which the form's script inserts below the form."""
    view = _view(session, plan_id)
    return _unknown(plan_id) if view is None else _html(view)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
def static(name: str) -> Response:
    """The pages' stylesheet and scripts (packaged with ppplan; nothing is fetched from elsewhere)."""
    media = _ASSETS.get(name)
    if media is None:
        return Response("not found\n", status_code=404, media_type="text/plain", headers=_HEADERS)
    return Response(asset(name), media_type=media, headers={**_HEADERS, "Cache-Control": "max-age=300"})
