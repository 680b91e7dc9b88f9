"""Every library internal the gateway relies on, checked by name: a release that renames
or removes one fails here, loudly, instead of deep inside a render or a connection.
Each of these libraries is also bounded in pyproject.toml."""

from __future__ import annotations

import inspect


def test_python_liquid_internals() -> None:
    from liquid.builtin.filters import misc
    from liquid.builtin.output import Output, OutputNode
    from liquid.builtin.tags.for_tag import ForLoop
    from liquid.filter import string_filter
    from liquid.token import TOKEN_OUTPUT

    loop = ForLoop(name="x", it=iter(()), length=3, parentloop=None)
    loop._index = 1  # the compiler steps loops by setting it (compiler._Loop.run)
    assert (loop.index, loop.rindex, loop.first, loop.last) == (2, 2, False, False)
    assert callable(misc._to_date)  # fastfilters' date shortcut reuses python-liquid's parser
    assert Output.node_class is OutputNode and TOKEN_OUTPUT == "output"  # blank.guard_outputs
    assert "render_to_output" in OutputNode.__dict__
    assert string_filter(lambda v: v).__code__ is string_filter(lambda v: v).__code__  # compiler's shortcut


def test_hpack_internals() -> None:
    from hpack.huffman_table import decode_huffman
    from hpack.table import HeaderTable

    assert callable(decode_huffman) and len(HeaderTable.STATIC_TABLE) == 61


def test_aiohttp_internal() -> None:
    from aiohttp.web_protocol import RequestHandler

    assert "_request_count" in RequestHandler.__slots__  # gateway/intake/guard.py


def test_aioapns_internals() -> None:
    """The aioapns transport points the library at an endpoint by subclassing its protocol
    class with APNS_SERVER and APNS_PORT (library.AioapnsPool)."""
    from aioapns.connection import APNsKeyConnectionPool, APNsProductionClientProtocol

    assert APNsProductionClientProtocol.APNS_SERVER == "api.push.apple.com"
    assert APNsProductionClientProtocol.APNS_PORT == 443
    assert "protocol_class" in inspect.getsource(APNsKeyConnectionPool._create_connection)


def test_logging_switch_for_finding_the_caller() -> None:
    """gateway/logs.py turns off the stack walk for each record's file and line."""
    import logging

    assert hasattr(logging, "_srcfile")
    assert "if _srcfile" in inspect.getsource(logging.Logger._log)
