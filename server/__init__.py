"""The HTTP server and CLI: settings, app wiring, routers. Domain logic lives elsewhere."""
