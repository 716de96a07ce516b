"""The FastAPI shell every service mounts: liveness, readiness, Prometheus metrics and info."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import shared


class Probed(Protocol):
    """What the app needs from a runtime (the Kafka runtime, or a test double in unit tests)."""

    registry: CollectorRegistry

    def alive(self) -> bool: ...

    def readiness(self) -> dict[str, str]: ...

    def info(self) -> dict: ...


def _runtime(request: Request) -> Probed:
    return request.app.state.runtime


RuntimeDep = Annotated[Probed, Depends(_runtime)]


def create_app(runtime: Probed, *, settings_view: dict | None = None, title: str = "vlf service") -> FastAPI:
    """``settings_view`` is shown on /info and must already have secrets masked
    (``shared.runtime.service.settings_view`` masks SecretStr fields and URL passwords)."""
    app = FastAPI(title=title, version=shared.__version__)
    app.state.runtime = runtime

    @app.get("/healthz")
    def healthz(rt: RuntimeDep) -> JSONResponse:
        alive = rt.alive()
        return JSONResponse({"alive": alive}, status_code=200 if alive else 503)

    @app.get("/readyz")
    def readyz(rt: RuntimeDep) -> JSONResponse:
        checks = rt.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics(rt: RuntimeDep) -> Response:
        return Response(generate_latest(rt.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    def info(rt: RuntimeDep) -> dict:
        return {"version": shared.__version__, **rt.info(), "settings": settings_view or {}}

    return app
