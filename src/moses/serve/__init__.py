"""`moses serve`: an OpenAI-compatible HTTP server for every task of one MoSEs adapter (FastAPI + uvicorn).
engine.py generates for a batch of requests with per-sample tasks; batcher.py gathers concurrent requests into
those batches; app.py is the HTTP API (completions, chat completions, models, reload, health, metrics)."""

from moses.serve.app import create_app
from moses.serve.engine import AUTO, Engine, GenerationRequest, GenerationResult

__all__ = ["AUTO", "Engine", "GenerationRequest", "GenerationResult", "create_app"]
