"""Length-prefixed JSON frames over a Unix stream socket, with optional descriptor passing.

The caller, the zygote and the workers talk through this one framing. Frames coming *from* a worker are
untrusted (the worker runs model code in the same process), so the reader caps the frame size, decodes only
JSON (never pickle), and rejects anything that is not a JSON object. A `Channel` reads with a deadline, both
from blocking code (`poll`) and from asyncio (`add_reader`), and also watches an optional "death" descriptor
(a pidfd) so that a worker that dies mid-call is noticed at once instead of at the deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import struct
import time
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FDS_PER_FRAME = 4


class WireError(Exception):
    """The peer broke the framing, closed the channel, sent too much, or sent something that is not JSON."""


class PeerDied(WireError):
    """The process at the other end exited while we were waiting for a reply."""


class Deadline(WireError):
    """No complete frame arrived before the deadline."""


def encode(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _HEADER.pack(len(body)) + body


def send_frame(sock: socket.socket, obj: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """Send one frame from blocking code (used by the zygote and the worker, whose sockets block)."""
    data = encode(obj)
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv_frame_blocking(sock: socket.socket, max_bytes: int) -> tuple[dict[str, Any], list[int]]:
    """Read one frame from a blocking socket; used on the trusted side of the zygote and by workers."""
    chunk, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, MAX_FDS_PER_FRAME)
    if not chunk:
        raise WireError("channel closed")
    head = chunk
    while len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            raise WireError("channel closed inside a frame header")
        head += more
    (length,) = _HEADER.unpack(head)
    if length > max_bytes:
        raise WireError(f"frame of {length} bytes exceeds the {max_bytes}-byte limit")
    body = bytearray()
    while len(body) < length:
        more = sock.recv(min(1 << 20, length - len(body)))
        if not more:
            raise WireError("channel closed inside a frame body")
        body += more
    return _decode(bytes(body)), fds


def _decode(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("frame is not a JSON object")
    return obj


def _resolve(future: asyncio.Future[int], fd: int) -> None:
    if not future.done():
        future.set_result(fd)


class Channel:
    """The caller's end of a worker's socket: non-blocking, deadline-aware, untrusted input.

    `death_fd` is a descriptor that becomes readable when the peer process exits (a pidfd). Only one
    request is in flight per channel; the owning session serialises calls.
    """

    def __init__(self, sock: socket.socket, max_bytes: int, death_fd: int | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_bytes = max_bytes
        self.death_fd = death_fd
        self._buf = bytearray()
        self._fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: dict[str, Any]) -> None:
        data = memoryview(encode(obj))
        while data:
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)
                continue
            except OSError as exc:
                raise PeerDied(f"cannot send to the worker: {exc}") from None
            data = data[n:]

    def take_fds(self) -> list[int]:
        """Descriptors that arrived with frames read so far (ownership passes to the caller)."""
        fds, self._fds = self._fds, []
        return fds

    def _pump(self) -> bool:
        """Read what is available; return False at end of stream."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, MAX_FDS_PER_FRAME)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                raise WireError(f"receive failed: {exc}") from None
            self._fds.extend(fds)
            if len(self._fds) > MAX_FDS_PER_FRAME * 4:
                for fd in self._fds:
                    os.close(fd)
                self._fds.clear()
                raise WireError("peer sent too many descriptors")
            if not data:
                return False
            self._buf += data
            if len(self._buf) > self.max_bytes + _HEADER.size:
                raise WireError(f"reply exceeds the {self.max_bytes}-byte limit")

    def _frame(self) -> dict[str, Any] | None:
        if len(self._buf) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buf)
        if length > self.max_bytes:
            raise WireError(f"frame of {length} bytes exceeds the {self.max_bytes}-byte limit")
        if len(self._buf) < _HEADER.size + length:
            return None
        body = bytes(self._buf[_HEADER.size : _HEADER.size + length])
        del self._buf[: _HEADER.size + length]
        return _decode(body)

    def recv(self, deadline: float) -> dict[str, Any]:
        """Block until a frame arrives, the peer dies (`PeerDied`) or `deadline` passes (`Deadline`)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if self.death_fd is not None:
            poller.register(self.death_fd, select.POLLIN)
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Deadline("deadline passed")
            events = poller.poll(max(1, int(remaining * 1000) + 1))
            self._react(fd for fd, _ in events)

    async def arecv(self, deadline: float) -> dict[str, Any]:
        """The asyncio twin of `recv`: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Deadline("deadline passed")
            ready: asyncio.Future[int] = loop.create_future()
            watched = [self.sock.fileno()] + ([self.death_fd] if self.death_fd is not None else [])
            for fd in watched:
                loop.add_reader(fd, _resolve, ready, fd)
            try:
                fd = await asyncio.wait_for(ready, remaining)
            except asyncio.TimeoutError:
                raise Deadline("deadline passed") from None
            finally:
                for w in watched:
                    loop.remove_reader(w)
            self._react([fd])

    def _react(self, ready_fds) -> None:
        ready = set(ready_fds)
        if self.sock.fileno() in ready and not self._pump() and not self._frame_pending():
            raise PeerDied("the worker closed its channel")
        if self.death_fd is not None and self.death_fd in ready:
            # Drain anything the worker wrote before dying, then report the death.
            self._pump()
            if self._frame_pending():
                return
            raise PeerDied("the worker process exited")

    def _frame_pending(self) -> bool:
        if len(self._buf) < _HEADER.size:
            return False
        (length,) = _HEADER.unpack_from(self._buf)
        return len(self._buf) >= _HEADER.size + length

    def close(self) -> None:
        for fd in self.take_fds():
            os.close(fd)
        self.sock.close()
