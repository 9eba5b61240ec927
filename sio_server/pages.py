"""Static pages: the demo shop at `/`, the widget, the dashboard and the Admin UI."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

logger = logging.getLogger("sio_server.pages")

ROOT = Path(__file__).resolve().parent.parent
WEB_DIR = ROOT / "web"
NODE_MODULES = ROOT / "node_modules"
SOCKET_IO_CLIENT = NODE_MODULES / "socket.io-client" / "dist" / "socket.io.min.js"
ADMIN_UI_DIR = NODE_MODULES / "@socket.io" / "admin-ui" / "ui" / "dist"
ICON_FONT_DIR = NODE_MODULES / "@mdi" / "font"
# The Admin UI's page loads a web font from Google and its icons from a CDN;
# it gets the icons from our own origin instead, and a system font.
_ADMIN_UI_REPLACED = {
    '<link rel="stylesheet" href="https://fonts.googleapis.com/css?'
    'family=Roboto:100,300,400,500,700,900">': "",
    "https://cdn.jsdelivr.net/npm/@mdi/font@latest/css/materialdesignicons.min.css": (
        "icons/css/materialdesignicons.min.css"
    ),
}

# Pages of our own origin may run only our own scripts. The widget's styles
# live in a <style> element inside its shadow root, hence 'unsafe-inline' for
# styles only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


def _file(path: Path, *, page: bool = False, cache_s: int = 300) -> web.FileResponse:
    if not path.is_file():
        raise web.HTTPNotFound(reason=f"{path.name} is missing: run `make run`")
    headers = {
        "Cache-Control": f"public, max-age={cache_s}",
        "X-Content-Type-Options": "nosniff",
    }
    if page:
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["Cache-Control"] = "no-cache"
    return web.FileResponse(path, headers=headers)


async def demo_page(request: web.Request) -> web.FileResponse:
    """Serve a demo shop page that embeds the widget with one script tag."""
    return _file(WEB_DIR / "demo" / "index.html", page=True)


async def widget_script(request: web.Request) -> web.FileResponse:
    """Serve the embeddable widget; any site may load it with a script tag."""
    return _file(WEB_DIR / "widget" / "widget.js", cache_s=60)


async def socket_io_client(request: web.Request) -> web.FileResponse:
    """Serve socket.io-client from node_modules, so no page depends on a CDN."""
    return _file(SOCKET_IO_CLIENT, cache_s=3600)


async def dashboard(request: web.Request) -> web.FileResponse:
    """Serve the agent dashboard."""
    return _file(WEB_DIR / "agent" / "index.html", page=True)


async def dashboard_asset(request: web.Request) -> web.FileResponse:
    """Serve the dashboard's script and style sheet."""
    name = request.match_info["name"]
    if name not in {"agent.js", "agent.css"}:
        raise web.HTTPNotFound(reason=f"no dashboard file named {name!r}")
    return _file(WEB_DIR / "agent" / name, cache_s=60)


async def dashboard_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/agent/")


async def admin_page(request: web.Request) -> web.FileResponse:
    """Serve the admin pages: team management, the audit log, supervision."""
    return _file(WEB_DIR / "admin" / "index.html", page=True)


async def admin_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in {"admin.js", "admin.css"}:
        raise web.HTTPNotFound(reason=f"no admin file named {name!r}")
    return _file(WEB_DIR / "admin" / name, cache_s=60)


async def admin_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/admin/")


def _inside(folder: Path, relative: str) -> Path:
    """Return `folder / relative`; raise 404 for a path that leads out of `folder`."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise web.HTTPNotFound(reason="no such file")
    return path


async def admin_ui_page(request: web.Request) -> web.Response:
    """Serve the Socket.IO Admin UI's page, with its assets on our own origin."""
    path = ADMIN_UI_DIR / "index.html"
    if not path.is_file():
        raise web.HTTPNotFound(reason="the Admin UI is missing: run `make run`")
    html = path.read_text(encoding="utf-8")
    for old, new in _ADMIN_UI_REPLACED.items():
        html = html.replace(old, new)
    return web.Response(
        text=html,
        content_type="text/html",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def admin_ui_asset(request: web.Request) -> web.FileResponse:
    """Serve the Admin UI's scripts, styles and images from node_modules."""
    return _file(_inside(ADMIN_UI_DIR, request.match_info["path"]), cache_s=3600)


async def admin_ui_icons(request: web.Request) -> web.FileResponse:
    """Serve the icon font that the Admin UI uses."""
    path = request.match_info["path"]
    if not path.startswith(("css/", "fonts/")):
        raise web.HTTPNotFound(reason="no such file")
    return _file(_inside(ICON_FONT_DIR, path), cache_s=3600)


async def admin_ui_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/admin-ui/")


def add_page_routes(app: web.Application, *, admin_ui: bool = False) -> None:
    if not SOCKET_IO_CLIENT.is_file():
        logger.warning(
            "%s is missing, so the widget and dashboard cannot connect: run `npm ci`",
            SOCKET_IO_CLIENT,
        )
    app.router.add_get("/", demo_page)
    app.router.add_get("/widget.js", widget_script)
    app.router.add_get("/vendor/socket.io.min.js", socket_io_client)
    app.router.add_get("/agent", dashboard_redirect)
    app.router.add_get("/agent/", dashboard)
    app.router.add_get("/agent/{name}", dashboard_asset)
    app.router.add_get("/admin", admin_redirect)
    app.router.add_get("/admin/", admin_page)
    app.router.add_get("/admin/{name}", admin_asset)
    if admin_ui:
        app.router.add_get("/admin-ui", admin_ui_redirect)
        app.router.add_get("/admin-ui/", admin_ui_page)
        app.router.add_get("/admin-ui/icons/{path:.+}", admin_ui_icons)
        app.router.add_get("/admin-ui/{path:.+}", admin_ui_asset)
