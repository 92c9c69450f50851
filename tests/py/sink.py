#!/usr/bin/python3
"""A scriptable destination SMTP server for Skein's delivery tests, built on aiosmtpd.

Listens on every ADDRESS:PORT given and prints one JSON line per event to stdout:
  {"event": "listening", "addr": "127.0.0.41:2525"}
  {"event": "rcpt", "rcpt": ..., "code": 550, "peer": "127.0.0.1", "server": ...}
  {"event": "message", "peer": "127.0.0.1", "server": "127.0.0.41:2525", "ehlo": ...,
   "tls": false, "mail_from": ..., "rcpts": [...], "data": "...", "code": 250}

What it answers is decided by the recipient's local part, so a test scripts outcomes by
choosing addresses:
  reject-*      550 5.1.1 at RCPT (a hard bounce)
  nodomain-*    550 5.1.2 at RCPT (the domain failed, not the mailbox)
  policy-*      550 5.7.1 at RCPT (permanent, but not a reason to suppress)
  defer-N-*     450 4.2.1 at RCPT for the first N attempts, then accepted
  tempfail-*    451 4.3.0 at RCPT, always
  slowdown-*    450 4.7.0 at RCPT (a "slow down" reply)
  datafail-*    accepted at RCPT; the message gets 554 5.6.0 after DATA
  hold-N-*      accepted, but the reply after DATA waits N seconds; a "held" event is printed
                before the wait, so a test can act mid-delivery
  dropdot-N-*   the first N times, the message is received (a "message" event with code 0)
                and the connection is then dropped without a reply to the final dot
  anything else 250

Options: --tls CERT KEY offers STARTTLS (--tls-max VERSION caps its version);
--greeting-fail "421 ..." answers every connection
with that reply and closes it (a host that refuses service); --delay SECONDS makes every reply
after DATA wait that long (a slow destination).
"""
import argparse
import asyncio
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP

attempts = {}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rcpt_reply(address):
    local = address.split("@", 1)[0].lower()
    if local.startswith("reject-"):
        return "550 5.1.1 <%s>: no such user here" % address
    if local.startswith("nodomain-"):
        return "550 5.1.2 <%s>: host or domain name not found" % address
    if local.startswith("policy-"):
        return "550 5.7.1 <%s>: refused by policy" % address
    if local.startswith("tempfail-"):
        return "451 4.3.0 <%s>: temporary local problem" % address
    if local.startswith("slowdown-"):
        return "450 4.7.0 <%s>: too many messages, slow down" % address
    if local.startswith("defer-"):
        parts = local.split("-")
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 1
        seen = attempts.get(address.lower(), 0)
        attempts[address.lower()] = seen + 1
        if seen < n:
            return "450 4.2.1 <%s>: mailbox busy, try later" % address
    return "250 2.1.5 OK"


DELAY = 0.0


class Handler:
    def __init__(self, server_addr):
        self.server_addr = server_addr

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = rcpt_reply(address)
        code = int(reply[:3])
        if code != 250:
            emit({"event": "rcpt", "rcpt": address, "code": code,
                  "peer": session.peer[0], "server": self.server_addr})
            return reply
        envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content or b""
        code = 250
        reply = "250 2.0.0 accepted"
        locals_ = [r.split("@", 1)[0].lower() for r in envelope.rcpt_tos]
        if any(l.startswith("datafail-") for l in locals_):
            code, reply = 554, "554 5.6.0 message content rejected"
        if DELAY:
            await asyncio.sleep(DELAY)
        hold = 0
        for l in locals_:
            parts = l.split("-")
            if parts[0] == "hold" and len(parts) > 1 and parts[1].isdigit():
                hold = max(hold, int(parts[1]))
        if hold:
            emit({"event": "held", "peer": session.peer[0], "rcpts": list(envelope.rcpt_tos)})
            await asyncio.sleep(hold)
        drop = False
        for r in envelope.rcpt_tos:
            parts = r.split("@", 1)[0].lower().split("-")
            if parts[0] == "dropdot" and len(parts) > 1 and parts[1].isdigit():
                seen = attempts.get("dropdot:" + r.lower(), 0)
                attempts["dropdot:" + r.lower()] = seen + 1
                drop = drop or seen < int(parts[1])
        if drop:
            code = 0
        emit({
            "event": "message",
            "peer": session.peer[0],
            "server": self.server_addr,
            "ehlo": session.host_name,
            "tls": session.ssl is not None,
            "mail_from": envelope.mail_from,
            "rcpts": list(envelope.rcpt_tos),
            "data": data.decode("utf-8", "replace"),
            "code": code,
        })
        if drop:
            server.transport.abort()
        return reply


class Refuser(asyncio.Protocol):
    def __init__(self, reply):
        self.reply = reply

    def connection_made(self, transport):
        transport.write((self.reply + "\r\n").encode())
        transport.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addrs", nargs="+", help="ADDRESS:PORT to listen on")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--tls-max", help="highest TLS version offered (e.g. TLSv1_1: clients "
                    "that need TLS 1.2 fail the handshake)")
    ap.add_argument("--greeting-fail")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds every reply after DATA waits (a slow destination)")
    args = ap.parse_args()
    global DELAY
    DELAY = args.delay
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
        if args.tls_max:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = getattr(ssl.TLSVersion, args.tls_max)
    loop = asyncio.get_running_loop()
    servers = []
    for a in args.addrs:
        host, port = a.rsplit(":", 1)
        if args.greeting_fail:
            factory = (lambda r=args.greeting_fail: Refuser(r))
        else:
            factory = (lambda a=a: SMTP(Handler(a), hostname="sink.test", tls_context=ctx,
                                        enable_SMTPUTF8=True, decode_data=False,
                                        data_size_limit=50 * 1024 * 1024))
        servers.append(await loop.create_server(factory, host, int(port)))
        emit({"event": "listening", "addr": a})
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
