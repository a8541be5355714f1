"""Signed, expiring download URLs: ``/files/{name}?expires=...&signature=...``.

A browser's ``<video src>`` or a third party named in a webhook cannot send an API key, so a
result file is fetched with a URL that carries its own proof: an HMAC-SHA256 over the path and
the expiry, under a key only the service holds. Whoever has the URL may fetch that one file until
it expires, as with S3's presigned URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import urlencode

#: How long a signed URL stays valid by default, seconds (AppArgs.file_url_ttl_s): long enough to
#: watch or fetch a result after a status call or a webhook, short enough that a leaked URL dies.
DEFAULT_FILE_URL_TTL_S = 3600.0

#: Expiry times are rounded up to a multiple of this many seconds, so that a page polling a job
#: gets the same URL for a while and the browser's cache keeps the video.
EXPIRY_GRANULARITY_S = 300


def derive_key(secret: str, purpose: str) -> bytes:
    """A key for ``purpose`` derived from the service's secret (HMAC-SHA256, as HKDF's expand
    step), so that one secret serves several uses without one use's output revealing another's."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


class UrlSigner:
    """Signs and checks download paths.

    Args:
        key: the HMAC key (``derive_key(secret, "file-urls")``).
        ttl_s: how long a URL stays valid, seconds (at least; expiry is rounded up to 300 s).
        clock: Unix seconds.
    """

    def __init__(self, key: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.key, self.ttl_s, self.clock = key, ttl_s, clock

    def _signature(self, path: str, expires: int) -> str:
        return hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str) -> str:
        """``path`` with ``expires`` (Unix seconds) and ``signature`` query parameters."""
        expires = math.ceil((self.clock() + self.ttl_s) / EXPIRY_GRANULARITY_S) * EXPIRY_GRANULARITY_S
        return f"{path}?{urlencode({'expires': expires, 'signature': self._signature(path, expires)})}"

    def valid(self, path: str, expires: str | None, signature: str | None) -> bool:
        """Whether ``signature`` signs ``path`` until ``expires`` and that time has not passed."""
        if not expires or not signature or not expires.isdigit():
            return False
        if int(expires) < self.clock():
            return False
        return hmac.compare_digest(self._signature(path, int(expires)), signature)
