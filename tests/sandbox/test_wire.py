"""The framing between caller and worker treats every frame from a worker as untrusted."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from thyme.sandbox import wire


def pair(max_bytes: int = 1024):
    a, b = socket.socketpair()
    return wire.Channel(a, max_bytes), b


def test_round_trip():
    ch, peer = pair()
    wire.send_frame(peer, {"x": [1, "ü"]})
    assert ch.recv(time.monotonic() + 1) == {"x": [1, "ü"]}


def test_frames_split_across_writes():
    ch, peer = pair()
    data = wire.encode({"hello": "world"})
    peer.sendall(data[:3])
    with pytest.raises(wire.Deadline):
        ch.recv(time.monotonic() + 0.05)
    peer.sendall(data[3:])
    assert ch.recv(time.monotonic() + 1) == {"hello": "world"}


def test_oversized_frame_is_refused():
    ch, peer = pair(max_bytes=100)
    peer.sendall(struct.pack("!I", 10_000_000))
    with pytest.raises(wire.WireError, match="exceeds"):
        ch.recv(time.monotonic() + 1)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b'"string"'])
def test_malformed_frames_are_refused(body):
    ch, peer = pair()
    peer.sendall(struct.pack("!I", len(body)) + body)
    with pytest.raises(wire.WireError):
        ch.recv(time.monotonic() + 1)


def test_closed_peer_is_reported():
    ch, peer = pair()
    peer.close()
    with pytest.raises(wire.PeerDied):
        ch.recv(time.monotonic() + 1)


def test_deadline():
    ch, _peer = pair()
    start = time.monotonic()
    with pytest.raises(wire.Deadline):
        ch.recv(start + 0.1)
    assert time.monotonic() - start < 0.5


def test_pickle_is_never_decoded():
    import pickle

    ch, peer = pair()
    body = pickle.dumps({"a": 1})
    peer.sendall(struct.pack("!I", len(body)) + body)
    with pytest.raises(wire.WireError):
        ch.recv(time.monotonic() + 1)
