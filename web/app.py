"""The aiohttp application factory and the server that runs it inside the daemon's loop."""

from __future__ import annotations

import socket

from aiohttp import web

from runner.daemon import Daemon
from runner.service import JobService
from web import auth_routes, capacity_routes, meta_routes, results_routes, secrets_routes
from web.dashboard import add_dashboard
from web.errors import error_middleware
from web.routes import SERVICE, routes
from web.security import POLICY, AccessPolicy, access_middleware


def create_app(service: JobService, policy: AccessPolicy, max_body_bytes: int) -> web.Application:
    # The access checks come first: a refused request reaches no handler and reads no body.
    app = web.Application(middlewares=[access_middleware, error_middleware], client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[POLICY] = policy
    app.add_routes(routes)
    app.add_routes(results_routes.routes)
    app.add_routes(secrets_routes.routes)
    app.add_routes(auth_routes.routes)
    app.add_routes(meta_routes.routes)
    app.add_routes(capacity_routes.routes)
    add_dashboard(app)
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
        settings = self.daemon.settings
        # The app is made once the port is known (its origin check needs it): bind first, on a
        # socket of our own, then serve the app on it.
        sock = _bind(settings.host, settings.port)
        try:
            port = sock.getsockname()[1]
            policy = AccessPolicy.build(self.daemon.access.token, settings.host, port, settings.allowed_hosts)
            app = create_app(self.daemon.service, policy, settings.max_body_bytes)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
            await self._runner.setup()
        except BaseException:
            sock.close()
            raise
        site = web.SockSite(self._runner, sock)
        await site.start()
        host, port = _bound_address(self._runner)
        self.base_url = f"http://{host}:{port}"
        self.daemon.begin_running(self.base_url)

    @property
    def token(self) -> str | None:
        return self.daemon.access.token

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.daemon.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bound_address(runner: web.AppRunner) -> tuple[str, int]:
    for address in runner.addresses:
        host, port = address[0], address[1]
        if ":" in host:
            host = f"[{host}]"
        return host, port
    raise RuntimeError("the HTTP site is not listening")
