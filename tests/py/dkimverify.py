#!/usr/bin/env python3
"""Verifies every DKIM-Signature of a message with dkimpy (Debian's python3-dkim), a verifier
not written here, fetching the keys from the given DNS server.

Usage: dkimverify.py NAMESERVER:PORT < message
Prints one JSON object: {"results": [{"d": "example.com", "s": "sel", "a": "ed25519-sha256",
"ok": true, "error": null}, ...]}, one entry per signature, top first.
"""
import json
import sys

import dkim
import dns.resolver


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = int(port)

    def txt(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = res.resolve(name.rstrip("."), "TXT", lifetime=timeout)
        except Exception:
            return None
        for rr in answer:
            return b"".join(rr.strings)
        return None

    msg = sys.stdin.buffer.read()
    d = dkim.DKIM(msg)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        v = dkim.DKIM(msg)
        entry = {"ok": False, "error": None}
        try:
            entry["ok"] = bool(v.verify(idx=i, dnsfunc=txt))
        except Exception as e:  # a malformed signature or record
            entry["error"] = f"{type(e).__name__}: {e}"
        fields = v.signature_fields or {}
        for tag in ("d", "s", "a"):
            val = fields.get(tag.encode())
            entry[tag] = val.decode() if isinstance(val, bytes) else val
        results.append(entry)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    sys.exit(main())
