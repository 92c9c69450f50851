#!/usr/bin/env python3
"""Submits messages to an SMTP server with Python's smtplib (an SMTP client not written here).

Prints one JSON line per message, flushed as it happens:
  {"i": 0, "code": 250, "reply": "2.0.0 Ok: queued as 0000000000050000", "id": "0000000000050000"}
  {"i": 1, "code": 451, "reply": "4.3.0 ..."}          (refused, nothing stored)
  {"i": 2, "error": "SMTPServerDisconnected: ..."}     (no reply: outcome unknown to the client)
and a final {"done": true, "ok": N, "failed": M}.
"""
import argparse
import json
import re
import smtplib
import ssl
import sys
import time


def connect(a):
    ctx = None
    if a.cafile:
        ctx = ssl.create_default_context(cafile=a.cafile)
    src = (a.source_ip, 0) if a.source_ip else None
    if a.ssl:
        s = smtplib.SMTP_SSL(a.host, a.port, context=ctx, timeout=a.timeout,
                             source_address=src, local_hostname="client.test")
    else:
        s = smtplib.SMTP(a.host, a.port, timeout=a.timeout, source_address=src,
                         local_hostname="client.test")
    s.ehlo()
    if a.starttls:
        s.starttls(context=ctx)
        s.ehlo()
    if a.user:
        s.user, s.password = a.user, a.password
        if a.auth == "login":
            code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        else:
            code, resp = s.login(a.user, a.password) if a.auth == "any" else s.auth(
                "PLAIN", s.auth_plain)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, resp)
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ssl", action="store_true", help="implicit TLS")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth", default="plain", choices=["plain", "login", "any"])
    p.add_argument("--source-ip")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--per-connection", type=int, default=10)
    p.add_argument("--mail-from", default="sender@example.com")
    p.add_argument("--rcpt", action="append", default=[])
    p.add_argument("--size", type=int, default=200, help="approximate body bytes")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between messages")
    p.add_argument("--tag", help="Message-ID is <TAG.I@client.test>, so a test can find each "
                   "message at the destination")
    p.add_argument("--header", action="append", default=[],
                   help="an extra header field, e.g. 'X-Skein-Pool: bulk'")
    a = p.parse_args()
    rcpts = a.rcpt or ["rcpt@example.net"]
    ok = failed = 0
    s = None
    sent_on_conn = 0
    for i in range(a.count):
        line = "x" * 70 + "\r\n"
        extra = "".join(h + "\r\n" for h in a.header)
        body = (f"From: <{a.mail_from}>\r\nTo: <{rcpts[0]}>\r\n{extra}Subject: message {i}\r\n"
                f"Message-ID: {message_id(a.tag, i)}\r\n\r\n"
                + line * max(1, a.size // len(line)) + f"end of message {i}\r\n")
        rec = {"i": i}
        try:
            if s is None or sent_on_conn >= a.per_connection:
                if s is not None:
                    try:
                        s.quit()
                    except Exception:
                        pass
                s = connect(a)
                sent_on_conn = 0
            sent_on_conn += 1
            try:
                s.sendmail(a.mail_from, rcpts, body.encode())
                code, reply = 250, s._last_reply if hasattr(s, "_last_reply") else ""
            except smtplib.SMTPDataError as e:
                code, reply = e.smtp_code, e.smtp_error
            except smtplib.SMTPRecipientsRefused as e:
                code, reply = list(e.recipients.values())[0]
            except smtplib.SMTPSenderRefused as e:
                code, reply = e.smtp_code, e.smtp_error
            if isinstance(reply, bytes):
                reply = reply.decode(errors="replace")
            rec["code"] = code
            rec["reply"] = reply
            m = re.search(r"queued as ([0-9A-F]+)", reply or "")
            if code == 250 and m:
                rec["id"] = m.group(1)
                ok += 1
            else:
                failed += 1
                if code >= 400:
                    s.rset()
        except Exception as e:  # connection lost, refused, TLS error...
            rec["error"] = f"{type(e).__name__}: {e}"
            failed += 1
            s = None
            time.sleep(0.05)
        print(json.dumps(rec), flush=True)
        if a.pause:
            time.sleep(a.pause)
    if s is not None:
        try:
            s.quit()
        except Exception:
            pass
    print(json.dumps({"done": True, "ok": ok, "failed": failed}), flush=True)


def message_id(tag, i):
    return f"<{tag}.{i}@client.test>" if tag else f"<m{i}.{time.time()}@client.test>"


# smtplib's sendmail() discards the reply to the final dot; keep it so the queue id is visible.
_orig_data = smtplib.SMTP.data


def _data(self, msg):
    code, reply = _orig_data(self, msg)
    self._last_reply = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    return code, reply


smtplib.SMTP.data = _data

if __name__ == "__main__":
    sys.exit(main())
