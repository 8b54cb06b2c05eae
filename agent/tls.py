"""One TLS context for every HTTPS client of the process.

Building a context reads the CA bundle (about 20 ms of CPU), and each SDK client builds up to
three of its own (google-genai: one for httpx, one for aiohttp, one for websockets). A session
makes a client per cascade tier, so 30 sessions starting in a burst spent seconds of CPU on it,
on their event loops. An `ssl.SSLContext` is safe to share between threads, so one serves all.
It trusts what the SDKs trust by default: certifi's bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`.
"""

from __future__ import annotations

import os
import ssl
import threading

import certifi

_context: ssl.SSLContext | None = None
_lock = threading.Lock()


def shared_tls_context() -> ssl.SSLContext:
    global _context
    with _lock:
        if _context is None:
            _context = ssl.create_default_context(
                cafile=os.environ.get("SSL_CERT_FILE", certifi.where()),
                capath=os.environ.get("SSL_CERT_DIR"))
        return _context
