"""The embedded model as `make run` starts it, for the one test and the benchmark about it."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .processes import ROOT, free_port, stop_process

# A one-page Markdown handbook, as in the README's first flow (held in: the same text every run).
HANDBOOK = """# Acme Support Handbook

## Opening hours
Our support desk is open Monday to Friday from 8:00 to 18:00 Central European Time.
On public holidays the desk is closed and tickets are answered on the next working day.

## Refunds
Customers can ask for a full refund within 30 days of purchase. After 30 days we offer
store credit instead of money back. Refunds are paid to the original payment method
within 5 business days.

## Passwords
A user who forgot their password can reset it from the login page. The reset link in
the email expires after 2 hours. Support staff must never ask a customer for their password.

## Escalation
Tickets that are not answered within 24 hours are escalated to the team lead. Security
incidents are escalated at once to the on-call engineer by phone.

## Shipping
Orders placed before 14:00 ship the same working day. Standard delivery takes 2 to 4
working days within the EU; express delivery takes one working day and costs 12 euros.
"""
START_TIMEOUT = 180


class ModelStartError(RuntimeError):
    """The embedded model did not come up; the message holds the end of its log."""


def start_embedded_model(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m masscer.localmodel` on a free port; (process, server URL) once /health answers."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "masscer.localmodel", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None:
                tail = log.read_text()[-3000:]
                raise ModelStartError(f"the embedded model exited during start-up:\n{tail}") from None
            time.sleep(0.5)
    stop_process(process)
    raise ModelStartError(f"the embedded model did not answer /health within {START_TIMEOUT} s")
