"""Which sandbox host a new session goes to: a client's view of several `thyme sandbox serve` hosts.

`HostPool` keeps, per host, how many sessions this client has open there and whether the host is down (a
connection to it could not be opened lately). `reserve` picks the live host with the fewest open sessions,
ties at random so that many independent clients spread too, and counts the session at once, so that
concurrent callers spread; `release` uncounts it. A host marked down is left out for `retry_down_s`, then
tried again; when every host is down, all are tried. Thread-safe. Used by `thyme.sandbox.client`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def split_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Sandbox host URLs from one URL, a comma-separated string of them, or a list (each may hold commas);
    a one-line `ValueError` names a malformed or repeated one."""
    items = [urls] if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a sandbox URL must be a string like http://host:8765, got {item!r}")
        for url in (u.strip() for u in item.split(",")):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"a sandbox URL must look like http://host:port, got {url!r}")
            if url.rstrip("/") in found:
                raise ValueError(f"the sandbox URL {url!r} is listed twice")
            found.append(url.rstrip("/"))
    if not found:
        raise ValueError("no sandbox URL given; pass http://host:port (several: comma-separated)")
    return tuple(found)


class Host:
    """One sandbox server: its address and what the client knows of it (its connections are the client's).
    The mutable fields belong to the `HostPool`'s lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions = 0
        self.down_until = 0.0  # time.monotonic() before which new sessions avoid this host

    @property
    def down(self) -> bool:
        return self.down_until > time.monotonic()


class HostPool:
    """The hosts of one client (see the module docstring)."""

    def __init__(self, urls: str | Sequence[str], retry_down_s: float) -> None:
        self.hosts = [Host(url) for url in split_urls(urls)]
        self.retry_down_s = retry_down_s
        self.lock = threading.Lock()

    def get(self, url: str | None = None) -> Host:
        """The host `url`, or the first one."""
        if url is None:
            return self.hosts[0]
        for host in self.hosts:
            if host.url == url:
                return host
        raise ValueError(f"{url!r} is not one of this client's hosts {[h.url for h in self.hosts]}")

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"url": h.url, "sessions": h.sessions, "down": h.down} for h in self.hosts]

    def reserve(self, exclude: set[str]) -> Host | None:
        """The live host not in `exclude` (URLs) with the fewest open sessions (down hosts only when no live
        one is left), counted now; None when every host is excluded."""
        with self.lock:
            left = [h for h in self.hosts if h.url not in exclude]
            if not left:
                return None
            live = [h for h in left if not h.down] or left
            fewest = min(h.sessions for h in live)
            host = random.choice([h for h in live if h.sessions == fewest])
            host.sessions += 1
            return host

    def add(self, host: Host) -> None:
        """Count one more session on `host` (a fork, which lives where its parent does)."""
        with self.lock:
            host.sessions += 1

    def release(self, host: Host) -> None:
        with self.lock:
            host.sessions -= 1

    def mark(self, host: Host, reachable: bool) -> None:
        """Record that `host` answered, or that a connection to it could not be opened (down for a while)."""
        with self.lock:
            was_down = host.down_until > 0
            host.down_until = 0.0 if reachable else time.monotonic() + self.retry_down_s
        if reachable and was_down:
            log.info("sandbox host %s answers again", host.url)
        elif not reachable and not was_down and len(self.hosts) > 1:
            log.warning(
                "sandbox host %s is unreachable: new sessions go to the other hosts; retried in %g s",
                host.url,
                self.retry_down_s,
            )
