"""Stand-in worker entries for process tests: they speak the worker protocol with no framework.
They answer ping; any other request makes them behave as options["behaviour"] says. Like real
workers they run in a process group of their own with faulthandler on (backends/worker.py)."""

import os
import subprocess
import time

from backends.worker import enable_fault_reports
from harness.workers.protocol import Failure, Op, Progress, Reply


def main(framework, conn, options):
    os.setpgrp()
    enable_fault_reports(options.get("fault_file"))
    while conn.recv().op is Op.PING:
        conn.send(Reply(None, 0.0))
    behaviour = options["behaviour"]
    if behaviour in ("peer_error", "peer_error_late"):  # a rank whose collective failed because its peer died
        if behaviour == "peer_error_late":  # ... seen only after the peer's death
            time.sleep(0.3)
        conn.send(Failure("RuntimeError", "Connection closed by peer", "Traceback ... peer\n"))
        time.sleep(30)
    elif behaviour == "die_soon":  # dies at once; its peer's error may still be read first
        os._exit(9)
    elif behaviour == "die_later":  # dies just after its peer's error reached the coordinator
        time.sleep(0.2)
        os._exit(9)
    elif behaviour == "answer":  # a healthy worker: answers, then waits for the next request
        conn.send(Reply("done", 0.0))
        time.sleep(30)
    elif behaviour == "joins_then_hangs":  # a rank that joins its process group, then hangs in a step
        time.sleep(0.5)
        conn.send(Progress(0, 3))
        hang_here()
    elif behaviour == "child":  # starts a process of its own (as user code may), then hangs
        subprocess.Popen(["sleep", "600"])
        hang_here()
    else:
        hang_here()


def hang_here():
    time.sleep(30)
