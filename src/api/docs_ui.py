"""Swagger UI (`/docs`) and ReDoc (`/redoc`) from assets vendored in the package.

FastAPI's own pages load their scripts from a CDN; these load them from
`src/api/static/` (written by scripts/vendor_swagger_ui.sh, versions and sha256 in
its README.md), served at `/docs-assets/`, so no request leaves the host: the docs
work in an air-gapped deployment and the browser test proves it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/docs-assets"

# The pages may load only from this host. ReDoc 2 hard-codes an image from its CDN (the
# "API docs by Redocly" logo): the browser refuses it rather than fetch it, and ReDoc
# hides the broken image. Inline scripts and styles: FastAPI's pages start the UI
# with one, ReDoc styles with them. ReDoc's search runs in a blob: worker.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)

SWAGGER_UI_PARAMETERS = {
    "deepLinking": True,
    # The key entered with "Authorize" survives a reload (kept in the browser's storage).
    "persistAuthorization": True,
    "displayRequestDuration": True,
    # Swagger UI would otherwise send the document to an online validator.
    "validatorUrl": None,
}


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc (and their assets), only when the OpenAPI document is served."""
    openapi_url = app.openapi_url
    if not openapi_url:  # DOCS_ENABLED=false
        return
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs-assets")

    def prefix(request: Request) -> str:
        """The app's mount point behind a proxy (`--root-path`), as FastAPI's own pages use it."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        assets = f"{root}{ASSETS_PATH}/swagger-ui"
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
