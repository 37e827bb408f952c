"""daemon.completion: a released association completes the studies no other open association brought."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from predictd.daemon.completion import AssociationTracker


def test_one_association_completes_its_studies_on_release() -> None:
    tracker = AssociationTracker()
    for uid in ("1.2.3", "1.2.3", "1.2.4"):
        tracker.arrived(1, uid)
    assert tracker.open_associations("1.2.3") == 1
    assert tracker.released(1) == ["1.2.3", "1.2.4"]
    assert tracker.open_associations("1.2.3") == 0
    assert tracker.released(1) == []  # released twice, or after nothing: nothing more


def test_a_study_another_open_association_brought_waits_for_that_one() -> None:
    tracker = AssociationTracker()
    tracker.arrived(1, "1.2.3")
    tracker.arrived(2, "1.2.3")
    tracker.arrived(2, "1.2.9")
    assert tracker.released(2) == ["1.2.9"]
    assert tracker.released(1) == ["1.2.3"]


def test_an_abort_completes_nothing_but_lets_the_other_association_complete_it() -> None:
    tracker = AssociationTracker()
    tracker.arrived(1, "1.2.3")
    tracker.arrived(2, "1.2.3")
    tracker.closed(1)  # aborted: says nothing about the study
    assert tracker.released(2) == ["1.2.3"]
    tracker.arrived(3, "1.2.5")
    tracker.closed(3)
    assert tracker.open_associations("1.2.5") == 0


def test_threads_arriving_and_releasing_keep_the_counts() -> None:
    tracker = AssociationTracker()

    def association(n: int) -> list[str]:
        for _ in range(50):
            tracker.arrived(n, "1.2.3")
        return tracker.released(n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = [uid for result in pool.map(association, range(32)) for uid in result]
    assert done.count("1.2.3") >= 1 and tracker.open_associations("1.2.3") == 0
