"""The aiohttp application factory and the server that runs it inside the daemon's loop."""

from __future__ import annotations

from aiohttp import web

from runner.daemon import Daemon
from runner.service import JobService
from web import results_routes, secrets_routes
from web.errors import error_middleware
from web.routes import SERVICE, routes

_MAX_BODY_BYTES = 16 * 1024 * 1024


def create_app(service: JobService) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=_MAX_BODY_BYTES)
    app[SERVICE] = service
    app.add_routes(routes)
    app.add_routes(results_routes.routes)
    app.add_routes(secrets_routes.routes)
    return app


class Server:
    """Daemon + HTTP site: `start()` returns once /health answers, `stop()` ends everything cleanly."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        await self.daemon.start()
        try:
            await self._serve()
        except BaseException:
            await self.stop()
            raise

    async def _serve(self) -> None:
        self._runner = web.AppRunner(
            create_app(self.daemon.service), access_log=None, handle_signals=False, shutdown_timeout=5
        )
        await self._runner.setup()
        settings = self.daemon.settings
        site = web.TCPSite(self._runner, settings.host, settings.port)
        await site.start()
        host, port = _bound_address(self._runner)
        self.base_url = f"http://{host}:{port}"
        self.daemon.begin_running(self.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.daemon.stop()


def _bound_address(runner: web.AppRunner) -> tuple[str, int]:
    for address in runner.addresses:
        host, port = address[0], address[1]
        if ":" in host:
            host = f"[{host}]"
        return host, port
    raise RuntimeError("the HTTP site is not listening")
