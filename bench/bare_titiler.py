"""The yardstick: titiler as shipped, with no catalogue, middleware or settings of ours.

`uvicorn bench.bare_titiler:app` serves the same tile endpoints tiledetect does, but reads any
`?url=` it is given. Benchmarks compare tiledetect's tile throughput against this app.
"""

from __future__ import annotations

from fastapi import FastAPI
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import TilerFactory


def create_bare_app() -> FastAPI:
    """FastAPI + titiler's default TilerFactory router + its error handlers; nothing else."""
    bare = FastAPI(title="bare titiler")
    bare.include_router(TilerFactory().router)
    add_exception_handlers(bare, DEFAULT_STATUS_CODES)
    return bare


app = create_bare_app()
