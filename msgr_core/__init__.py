"""msgr core: the messenger, its session protocol, and the contracts plugins implement."""

from __future__ import annotations

from .hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "hookspec"]
