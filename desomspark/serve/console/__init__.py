"""``desomspark serve``: the web console (``app`` builds it, ``routes`` its pages, ``view`` the shared lake
view)."""

from desomspark.serve.console.app import TOKEN_ENV, create_app, serve
from desomspark.serve.console.view import spreadsheet_safe

__all__ = ["TOKEN_ENV", "create_app", "serve", "spreadsheet_safe"]
