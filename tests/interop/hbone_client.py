"""HBONE client: one TLS connection, one CONNECT stream, prints what it saw as JSON.

usage: hbone_client.py --connect IP:PORT --authority IP:PORT --ca ROOT --cert C --key K
                       --expect-san SPIFFE [--method CONNECT|GET] [--payload TEXT] [--tls12]
"""

import argparse
import socket
import ssl

import h2.config
import h2.connection
import h2.events

from hbone_common import client_context, fail, report, uri_sans


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--authority", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--expect-san", required=True)
    parser.add_argument("--method", default="CONNECT")
    parser.add_argument("--payload", default="ping")
    parser.add_argument("--tls12", action="store_true")
    args = parser.parse_args()

    host, port = args.connect.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    context = client_context(args.ca, args.cert, args.key, max_tls12=args.tls12)
    try:
        tls = context.wrap_socket(raw, server_hostname=None)  # no SNI, as Istio
        # TLS 1.3 client-certificate failures surface on first read, after the handshake.
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
    except (ssl.SSLError, OSError) as error:
        report(handshake="failed", detail=str(error))
        return
    try:
        exchange(args, tls, conn)
    except (ssl.SSLError, OSError) as error:
        report(handshake="failed", detail=str(error))


def exchange(args, tls, conn):
    version, alpn = tls.version(), tls.selected_alpn_protocol()
    sans = uri_sans(tls.getpeercert())
    if args.expect_san not in sans:
        fail(f"server SANs {sans} do not include {args.expect_san}")

    headers = [(":method", args.method), (":authority", args.authority)]
    if args.method != "CONNECT":
        headers += [(":scheme", "https"), (":path", "/")]
    # As a sending ztunnel in-pod: the source it forwards is the address it connects from
    # (a destination refuses any other from a peer that is not a waypoint).
    host, port = tls.getsockname()[:2]
    source = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers += [("forwarded", f'for="{source}"'),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers, end_stream=False)
    tls.sendall(conn.data_to_send())

    status, body, ended = None, b"", False
    while not ended:
        data = tls.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
                if status == 200:
                    conn.send_data(stream_id, args.payload.encode(), end_stream=True)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                ended = True
        tls.sendall(conn.data_to_send())
    report(handshake="ok", tls_version=version, alpn=alpn, server_sans=sans,
           status=status, body=body.decode(errors="replace"))
    tls.close()


if __name__ == "__main__":
    main()
