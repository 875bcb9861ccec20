"""`braid serve`: an OpenAI-compatible HTTP server over the engine (the `serve` extra)."""
