"""The engine's door: the HTTP app, the ASGI front door (auth, size and rate limits) and the CLI."""
