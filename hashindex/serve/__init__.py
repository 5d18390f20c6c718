"""``hashindex serve``: the HTTP API and web page over an index (FastAPI on uvicorn)."""
