"""/docs and /redoc load only vendored assets, and go away with the OpenAPI document.

In-process; tests/browser/test_swagger.py renders them in a real browser.
"""

from __future__ import annotations

import asyncio
import re

import httpx
from fastapi import FastAPI

from src.api.docs_ui import STATIC_DIR, install_docs


def _app(openapi_url: str | None = "/openapi.json") -> FastAPI:
    app = FastAPI(title="T", docs_url=None, redoc_url=None, openapi_url=openapi_url)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    install_docs(app)
    return app


def _get(app: FastAPI, *paths: str) -> list[httpx.Response]:
    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(fetch())


def test_pages_load_only_from_this_host() -> None:
    app = _app()
    docs, redoc = _get(app, "/docs", "/redoc")
    for answer in (docs, redoc):
        assert answer.status_code == 200
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        html = answer.text
        links = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert links and all(link.startswith("/docs-assets/") for link in links), links
        assert "/openapi.json" in html
        assert all(a.status_code == 200 for a in _get(app, *links)), links
    assert '"validatorUrl": null' in docs.text


def test_docs_pages_are_not_operations() -> None:
    (answer,) = _get(_app(), "/openapi.json")
    paths = answer.json()["paths"]
    assert set(paths) == {"/ping"}


def test_no_docs_without_the_openapi_document() -> None:
    paths = ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui/swagger-ui.css")
    answers = _get(_app(openapi_url=None), *paths)
    assert [a.status_code for a in answers] == [404] * len(paths)


def test_vendored_assets_and_licences_are_there() -> None:
    for name in (
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/favicon-32x32.png",
        "swagger-ui/LICENSE",
        "redoc/redoc.standalone.js",
        "redoc/LICENSE",
        "README.md",
    ):
        assert (STATIC_DIR / name).stat().st_size > 0, name
