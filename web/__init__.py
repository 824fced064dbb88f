"""The aiohttp application: routes, request/response shapes, error middleware, entry point."""
