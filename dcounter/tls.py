"""TLS settings of a node, from the standard library's `ssl`.

The server side loads `--tls-cert`/`--tls-key` into a context that `server.Server` wraps each
accepted connection with (the handshake runs in the connection's thread, bounded by the request
deadline). The client side needs no context of its own: the transport calls peers over `https`
and verifies their certificates against `--tls-ca`, or against the public CA bundle that
`requests` ships (certifi) when no CA is given. Verification is never switched off. Client
certificates are not requested: peers prove who they are with the cluster secret's signatures.
"""

import ssl

from dcounter.errors import StartupError


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for `cert` and `key`; StartupError when they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load --tls-cert {cert} / --tls-key {key}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


def peer_verify(config):
    """The `verify` argument of the transport: the CA file, or True for the public CAs."""
    return config.tls_ca if config.tls_ca else True


def peer_scheme(config) -> str:
    return "https" if config.tls_cert else "http"
