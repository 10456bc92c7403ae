"""Shared pieces of the HBONE interop scripts: TLS contexts and certificate SANs.

These scripts are an independent HBONE implementation (Python's ssl module and the `h2`
package) used to prove our ztunnel speaks the wire format in docs/architecture.md ("HBONE on the wire").
"""

import json
import ssl
import sys


def uri_sans(cert):
    """URI SANs of a certificate as returned by SSLSocket.getpeercert()."""
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


def client_context(ca, cert, key, max_tls12=False):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the SPIFFE id is the name; checked by the caller
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    if cert:
        context.load_cert_chain(cert, key)
    if max_tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    return context


def server_context(ca, cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


def report(**fields):
    print(json.dumps(fields), flush=True)


def fail(message):
    report(error=message)
    sys.exit(1)
