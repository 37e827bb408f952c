"""daemon.wakeup.WorkAvailable: a notification is never lost between "found nothing" and "wait"."""

from __future__ import annotations

import threading

from predictd.daemon.wakeup import WorkAvailable
from tests.support import wait_until


def test_a_notification_before_the_wait_is_not_lost() -> None:
    work = WorkAvailable()
    seen = work.generation
    work.notify()  # between looking for work and waiting
    assert work.wait(seen, timeout=60)  # returns at once


def test_nothing_new_waits_out_the_timeout() -> None:
    work = WorkAvailable()
    assert not work.wait(work.generation, timeout=0.05)


def test_every_waiting_thread_wakes() -> None:
    work = WorkAvailable()
    seen = work.generation
    woken: list[bool] = []
    threads = [threading.Thread(target=lambda: woken.append(work.wait(seen, timeout=60))) for _ in range(4)]
    for t in threads:
        t.start()
    work.notify()
    for t in threads:
        t.join(timeout=10)
    wait_until(lambda: len(woken) == 4, timeout=10)
    assert woken == [True] * 4
