#!/usr/bin/env python3
"""Writes the seed corpus of the hbone_request fuzz target: what an HBONE client sends after TLS.

HTTP/2 frames by hand (RFC 9113) with HPACK literals without indexing (RFC 7541 §6.2.2), so each
seed is exactly the request it is named for. Run once from fuzz/: python3 make_hbone_seeds.py
"""
import os
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    def string(text):
        assert len(text) < 127
        return bytes([len(text)]) + text
    return b"\x00" + string(name) + string(value)


def block(*headers):
    return b"".join(literal(name, value) for name, value in headers)


def connect(stream, authority, *extra, end_stream=False):
    headers = block((b":method", b"CONNECT"), (b":authority", authority), *extra)
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, headers)


START = PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 4 * 1024 * 1024))
HBONE_HEADERS = ((b"forwarded", b'for="198.18.2.3:40000"'),
                 (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))

SEEDS = {
    "connect": START + connect(1, b"198.18.1.2:80", *HBONE_HEADERS),
    "connect-data-end": START + connect(1, b"198.18.1.2:8080", *HBONE_HEADERS)
    + frame(DATA, 0, 1, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n") + frame(DATA, END_STREAM, 1),
    "connect-v6": START + connect(1, b"[2001:db8::2]:443"),
    "connect-refused-odd-port": START + connect(1, b"198.18.1.2:81"),
    "get": START + frame(HEADERS, END_HEADERS | END_STREAM, 1, block(
        (b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"198.18.1.2:80"))),
    "bad-authority": START + connect(1, b"web.default.svc:80"),
    "two-streams-reset": START + connect(1, b"198.18.1.2:80") + connect(3, b"198.18.1.2:82")
    + frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) + frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", 65535)),
    "continuation": START + frame(HEADERS, 0, 1, block((b":method", b"CONNECT")))
    + frame(CONTINUATION, END_HEADERS, 1, block((b":authority", b"198.18.1.2:80"))),
    "ping-goaway": START + frame(PING, 0, 0, b"12345678") + frame(SETTINGS, ACK, 0)
    + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    "http1": b"GET / HTTP/1.1\r\nHost: 198.18.1.2\r\n\r\n",
}

if __name__ == "__main__":
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "hbone_request")
    os.makedirs(directory, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(directory, name), "wb") as out:
            out.write(data)
    print(f"wrote {len(SEEDS)} seeds to {directory}")
