"""The webhook transport: one signed notification POSTed to an agency's DMS over HTTPS.

:mod:`gateway.node.webhooks` builds, signs, schedules and retries the notifications; this is
the only part that speaks HTTP. The DMS's certificate is verified against the system's CA
certificates, or against ``[webhooks] ca_file`` when it is set (a government CA the system does
not carry); redirects are not followed (Standard Webhooks: a 3xx is a failure, fix the URL).
Whatever the DMS answers is reduced to an :class:`~gateway.node.webhooks.Answer`: its status,
or why there was none (unreachable, TLS, timeout); its body is read (at most 64 KiB, so the
connection can be kept alive) and ignored. A webhook URL may carry a token in its query: httpx's
own line per request (logger ``httpx``, with the URL) is dropped for the configured endpoints;
``webhook.sent`` and ``webhook.retry`` (gateway.node.webhooks) say what happened, by agency.

Usage::

    transport = HttpsWebhookTransport(settings)
    answer = transport.post(url, body, headers)     # Answer(status=200)
"""

from __future__ import annotations

import email.utils
import logging
import math
import ssl
import time
from collections.abc import Iterable, Mapping

import httpx

from gateway import __version__
from gateway.node.webhooks import Answer
from gateway.settings import Settings

__all__ = ["HttpsWebhookTransport"]

#: the most of an answer's body read before the connection is dropped instead of reused
_MAX_ANSWER_BYTES = 64 * 1024


class HttpsWebhookTransport:
    """POSTs notifications with one kept-alive ``httpx.Client`` (thread-safe: the scheduler's
    jobs, one per endpoint, share it)."""

    def __init__(self, settings: Settings) -> None:
        webhooks = settings.webhooks
        ca_file = str(webhooks.ca_file) if webhooks.ca_file is not None else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        self._quiet = _HideWebhookRequests(e.url for e in webhooks.endpoints)
        logging.getLogger("httpx").addFilter(self._quiet)
        self._client = httpx.Client(
            verify=context,
            timeout=httpx.Timeout(webhooks.timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            headers={"user-agent": f"edxml-gateway/{__version__} (webhooks)"},
        )

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``url``; what the DMS answered, or why it did not."""
        try:
            with self._client.stream("POST", url, content=body, headers=dict(headers)) as response:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read > _MAX_ANSWER_BYTES:
                        break
                return Answer(
                    status=response.status_code,
                    retry_after=_retry_after(response.headers.get("retry-after")),
                )
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return Answer(status=None, error=f"{type(exc).__name__}: {exc}"[:500])

    def close(self) -> None:
        self._client.close()
        logging.getLogger("httpx").removeFilter(self._quiet)


class _HideWebhookRequests(logging.Filter):
    """Drops httpx's ``HTTP Request: POST <url> ...`` lines for webhook URLs."""

    def __init__(self, urls: Iterable[str]) -> None:
        super().__init__()
        # as httpx writes them (a host in lower case, a default port dropped ...)
        self._urls = frozenset(_without_query(str(httpx.URL(url))) for url in urls)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 2:
            return True
        return _without_query(str(args[1])) not in self._urls


def _without_query(url: str) -> str:
    return url.split("#", 1)[0].split("?", 1)[0]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None: absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
