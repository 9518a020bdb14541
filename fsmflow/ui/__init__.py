"""The web dashboard (``fsmflow ui``, extra ``fsmflow[ui]``): a Starlette app over a store.

:func:`create_app` builds it; ``fsmflow ui`` serves it with uvicorn. Read-only unless
:class:`UIOptions` allow actions, which each need ``FSMFLOW_UI_TOKEN`` and the page's
CSRF token. Needs starlette and jinja2 (the extra); imports nothing of the CLI.
"""

from fsmflow.ui.app import create_app
from fsmflow.ui.rendering import UIOptions

__all__ = ["UIOptions", "create_app"]
