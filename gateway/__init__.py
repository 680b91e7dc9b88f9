"""An async, plugin-based notification delivery gateway.

Plugin authors import from `gateway.channel` (the channel contract) and
`gateway.hookspecs` (`hookimpl`); see docs/plugins.md.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
