"""mftd's HTTP API (FastAPI). Imports ``mftd`` and fastapi, never torch."""
