"""Shared by crashloop.py and overload.py: the address a started `jetstream serve` announces."""

import threading
import time


def wait_listening(proc, timeout=60.0):
    """Reads `proc`'s stdout until the server prints `listening on http://ADDR` and returns ADDR
    (None when it exits or says nothing within `timeout` s); the rest of its stdout is drained
    by a thread so that the server never blocks on a full pipe."""
    deadline = time.time() + timeout
    addr = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        text = line.decode(errors="replace").strip()
        if text.startswith("listening on http://"):
            addr = text.removeprefix("listening on http://")
            break
    if addr:
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return addr
