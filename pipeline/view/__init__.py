"""``pixseg view``: a local web viewer of a label output over its slide (see :mod:`pixseg.view.server`)."""

from __future__ import annotations

from pixseg.view.server import ViewerServer, make_server, serve

__all__ = ["ViewerServer", "make_server", "serve"]
