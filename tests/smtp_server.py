#!/usr/bin/python3
"""A real SMTP server for precert's tests (aiosmtpd's Controller + SMTP).

Stores every message in a Maildir (aiosmtpd.handlers.Mailbox), like
`python3 -m aiosmtpd -c aiosmtpd.handlers.Mailbox DIR`, and can in addition
offer STARTTLS (required before AUTH/MAIL), speak implicit TLS, and require
AUTH PLAIN/LOGIN with one user. Prints `ready HOST:PORT` once listening.

    smtp_server.py --listen 127.0.0.1:2525 --maildir DIR
        [--starttls CERT KEY | --smtps CERT KEY] [--auth USER:PASSWORD]
        [--size BYTES]
"""

import argparse
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


def tls_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def authenticator(user, password):
    expected = (user.encode(), password.encode())

    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == expected
        # A failure is answered with `535 5.7.8 Authentication credentials invalid`.
        return AuthResult(success=ok, handled=False)

    return check


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--maildir", required=True, metavar="DIR")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"), help="offer STARTTLS and require it")
    tls.add_argument("--smtps", nargs=2, metavar=("CERT", "KEY"), help="implicit TLS")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH PLAIN or LOGIN")
    parser.add_argument("--size", type=int, default=33554432, help="SIZE limit (bytes)")
    args = parser.parse_args()

    host, _, port = args.listen.rpartition(":")
    smtp = {"data_size_limit": args.size}
    controller = {}
    if args.starttls:
        smtp.update(tls_context=tls_context(*args.starttls), require_starttls=True)
    if args.smtps:
        controller["ssl_context"] = tls_context(*args.smtps)
        # aiosmtpd counts only STARTTLS as "TLS" for AUTH; this connection is TLS from the start.
        smtp["auth_require_tls"] = False
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep:
            parser.error("--auth takes USER:PASSWORD")
        smtp.update(
            authenticator=authenticator(user, password),
            auth_required=True,
        )

    server = Controller(Mailbox(args.maildir), hostname=host, port=int(port), **controller, **smtp)
    server.start()  # returns once the server answers (over TLS for --smtps)
    print(f"ready {host}:{port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
