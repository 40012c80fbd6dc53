"""`cxrtool serve`: a local search page over the same search API (``create_app(workspace)``)."""

from cxrtool.serve.app import create_app, run_server
from cxrtool.serve.service import SearchService

__all__ = ["SearchService", "create_app", "run_server"]
