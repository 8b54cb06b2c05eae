"""Whether a request its HTTP client failed may have reached the provider, which bills a
prompt it received, answered or not. One rule for the chat providers (agent/providers.py) and
Gemini embeddings (memory/embeddings.py), read from the failures of the clients their SDKs
send with: aiohttp (google-genai's), httpx (google-genai's without aiohttp) and httpx2
(anthropic's).

Imported where a provider's SDK is: google-genai loads all three clients itself, and a command
that never calls a provider pays for none of them (memory/embeddings.py).
"""

from __future__ import annotations

import aiohttp
import httpx
import httpx2

# How the clients fail once a request went out, before its answer ended (a read that failed
# or timed out, a server that hung up) ...
_AFTER_SENDING: tuple[type[BaseException], ...] = (
    TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
    aiohttp.ClientOSError, httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError,
    httpx2.ReadError, httpx2.ReadTimeout, httpx2.RemoteProtocolError,
)
# ... but for a connection never made, which aiohttp raises as a kind of the above: refused,
# DNS, TLS, or out of its own connect time
_NEVER_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def reached_provider(failure: BaseException | None) -> bool:
    """Whether the request `failure` (as its HTTP client raised it) ended may have reached the
    provider: the connection dropped or the answer timed out after the request went out. Not
    one that never left (the connection refused, DNS, TLS, a connect timeout the client tells
    apart) nor one written only in part. google-genai bounds a request with one aiohttp
    deadline over its connect and its answer (`ClientTimeout(total=...)`), whose plain
    `TimeoutError` does not say which it ran out in: every Gemini timeout, a chat's or an
    embedding's, counts as reached, a connect that never finished included."""
    return isinstance(failure, _AFTER_SENDING) and not isinstance(failure, _NEVER_SENT)
