"""The request-header timeout of ``vitmsn serve``: uvicorn's h11 protocol with one timer added.

uvicorn times out idle keep-alive connections, but a client that opens a connection and sends
its request line and headers slowly (or never finishes them) holds the connection for ever:
no ASGI app sees such a request, so the app cannot time it out. This protocol arms a timer when a
connection opens (and again after each response on a kept-alive connection) and disarms it once
h11 has parsed a complete request head. When it fires, a client that sent part of a request gets
``408`` (JSON, ``Connection: close``); one that sent nothing is closed silently; each is logged
on one line and counted (``vitmsn_http_incomplete_requests_total{reason="header_timeout"}``).
A connection still sending the unread body of a request already answered (``GET /healthz`` with
a body, a 404, ...), which uvicorn reads and discards, is closed when the timer fires as well.

The body-read timeout is the app's (``read_body`` in :mod:`vitmsn.serving.server`): it sees the
body arrive, can answer 408 itself and counts the request under its status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("vitmsn.serve")

_HEAD_DONE = (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


def header_timeout_protocol(timeout_s: float, on_timeout: Callable[[bool], None]) -> type[asyncio.Protocol]:
    """An h11 protocol class (for ``uvicorn.Config(http=...)``) closing connections whose request
    head has not arrived within ``timeout_s``; ``on_timeout(partial)`` is called for each."""
    body = json.dumps({"error": f"request headers not received within {timeout_s:g} s"}).encode()
    reply = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n" % len(body)) + body

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def handle_events(self) -> None:
            super().handle_events()
            # A request is being handled (its head parsed, its response not yet sent).
            if self._header_timer is not None and self.conn.their_state in _HEAD_DONE and self.conn.our_state is not h11.DONE:
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.our_state is not h11.SEND_RESPONSE:
                self._arm_header_timer()  # the next request on this kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
                log.warning("%s: still sending the body of an answered request after %g s; closed",
                            "%s:%s" % self.client if self.client else "client", timeout_s)
                self.transport.close()
                on_timeout(False)
                return
            if self.conn.their_state is not h11.IDLE:
                return
            received = len(self.conn.trailing_data[0])
            client = "%s:%s" % self.client if self.client else "client"
            if received:
                log.warning("%s: request headers incomplete after %g s (%d bytes received); answered 408 and closed",
                            client, timeout_s, received)
                self.transport.write(reply)
            self.transport.close()
            on_timeout(bool(received))

    return HeaderTimeoutH11Protocol
