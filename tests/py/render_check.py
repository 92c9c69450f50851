#!/usr/bin/env python3
"""Loads an HTML report in headless Chromium, keeps a screenshot, and counts the pixels of each
plot's colour, so a test can check that the plots render (not only that the markup is there).

usage: render_check.py REPORT.html SCREENSHOT.png
prints one JSON object: {"width": W, "height": H, "colors": {"#1f77b4": N, ...}}
"""
import json
import shutil
import struct
import subprocess
import sys
import zlib

COLORS = {"#1f77b4": (0x1F, 0x77, 0xB4), "#2ca02c": (0x2C, 0xA0, 0x2C),
          "#9467bd": (0x94, 0x67, 0xBD), "#d33": (0xDD, 0x33, 0x33),
          "#ff7f0e": (0xFF, 0x7F, 0x0E)}


def screenshot(html, png):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("chromium is not installed (scripts/setup.sh --tests installs it)")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=900,2600", f"--screenshot={png}", f"file://{html}"],
                   check=True, capture_output=True, timeout=120)


def pixels(png):
    """RGB(A) rows of a non-interlaced 8-bit PNG."""
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def main():
    html, png = sys.argv[1], sys.argv[2]
    screenshot(html, png)
    w, h, bpp, rows = pixels(png)
    counts = {k: 0 for k in COLORS}
    for line in rows:
        for x in range(0, len(line), bpp):
            px = tuple(line[x:x + 3])
            for k, rgb in COLORS.items():
                if all(abs(p - q) <= 8 for p, q in zip(px, rgb)):
                    counts[k] += 1
    print(json.dumps({"width": w, "height": h, "colors": counts}))


main()
