"""An async, plugin-based notification delivery gateway.

Plugin authors import from `gateway.plugin` (its `__all__` is the public API); every other
module is private. See docs/plugins.md and docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
