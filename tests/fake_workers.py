"""Stand-in worker entries for process tests: they speak the worker protocol with no framework.
They answer ping; any other request makes them behave as options["behaviour"] says."""

import os
import time

from harness.protocol import Failure, Op, Reply


def main(framework, conn, options):
    while conn.recv().op is Op.PING:
        conn.send(Reply(None, 0.0))
    behaviour = options["behaviour"]
    if behaviour == "peer_error":  # a rank whose collective failed because its peer died
        conn.send(Failure("RuntimeError", "Connection closed by peer", "Traceback ... peer\n"))
        time.sleep(30)
    elif behaviour == "die_soon":  # dies at once; its peer's error may still be read first
        os._exit(9)
    elif behaviour == "die_later":  # dies just after its peer's error reached the coordinator
        time.sleep(0.2)
        os._exit(9)
    else:
        time.sleep(30)
