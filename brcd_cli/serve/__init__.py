"""``brcd serve``: the model, codes and index loaded once, queries answered over HTTP, results shown as thumbnails."""
from .app import DEFAULT_MAX_BODY, create_app
from .runner import check_bind, run_server
from .service import SearchService

__all__ = ["DEFAULT_MAX_BODY", "SearchService", "check_bind", "create_app", "run_server"]
