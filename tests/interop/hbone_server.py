"""HBONE server: accepts TLS 1.3 + h2 connections and answers CONNECT streams.

The answer is chosen by the authority's port: 401 → 401, 503 → 503, anything else → 200
and the stream echoes what it receives, ending when the client ends. One JSON line per
stream (and per refused handshake) goes to stdout. The first line says it is listening.

usage: hbone_server.py --listen IP:PORT --ca ROOT --cert C --key K --trust-domain TD
"""

import argparse
import socket
import ssl
import threading

import h2.config
import h2.connection
import h2.events

from hbone_common import report, server_context, uri_sans


def serve(raw, context, trust_domain):
    try:
        tls = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as error:
        report(event="handshake_failed", detail=str(error))
        return
    sans = uri_sans(tls.getpeercert())
    if not any(san.startswith(f"spiffe://{trust_domain}/") for san in sans):
        report(event="refused_client", client_sans=sans)
        tls.close()
        return
    info = dict(tls_version=tls.version(), alpn=tls.selected_alpn_protocol(), client_sans=sans)
    config = h2.config.H2Configuration(client_side=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    streams = {}
    while True:
        try:
            data = tls.recv(65536)
        except OSError:
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                authority = headers.get(":authority", "")
                port = authority.rsplit(":", 1)[-1]
                status = {"401": 401, "503": 503}.get(port, 200)
                if headers.get(":method") != "CONNECT":
                    status = 400
                streams[event.stream_id] = dict(info, event="stream", method=headers.get(":method"),
                                                authority=authority, forwarded=headers.get("forwarded"),
                                                traceparent=headers.get("traceparent"), status=status,
                                                echoed=0)
                conn.send_headers(event.stream_id, [(":status", str(status))], end_stream=status != 200)
                if status != 200:
                    report(**streams.pop(event.stream_id))
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in streams and event.data:
                    conn.send_data(event.stream_id, event.data)
                    streams[event.stream_id]["echoed"] += len(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in streams:
                    conn.end_stream(event.stream_id)
                    report(**streams.pop(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                streams.pop(event.stream_id, None)
        tls.sendall(conn.data_to_send())
    tls.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--trust-domain", default="cluster.local")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    context = server_context(args.ca, args.cert, args.key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    report(event="listening", address=args.listen)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw, context, args.trust_domain), daemon=True).start()


if __name__ == "__main__":
    main()
