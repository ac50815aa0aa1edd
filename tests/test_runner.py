"""The one runner (fastpq.core.runner): its worker rule, in-order delivery, bounded window,
errors in input order, and suspect-data notes turned into warnings at the caller."""

import threading
import time
import warnings

import pytest

from fastpq.core import runner
from fastpq.core.runner import (IMAGES_PER_TASK, TASKS_PER_WORKER, ordered_map,
                                warn_suspect_data, worker_count)
from fastpq.errors import SuspectDataWarning


def test_worker_rule(monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 6)
    assert worker_count(None, 100) == 6
    assert worker_count(None, 4) == 4  # never more threads than images
    assert worker_count(16, 3) == 3
    assert worker_count(2, 100) == 2
    assert worker_count(0, 10) == 1 and worker_count(-3, 10) == 1
    assert worker_count(4, 0) == 1
    monkeypatch.setattr(runner.os, "cpu_count", lambda: None)  # unknown core count
    assert worker_count(None, 100) == 1


@pytest.mark.parametrize("workers, n_items", [(1, 37), (2, 1), (2, 5), (3, 37), (4, 200)])
def test_results_come_in_input_order(workers, n_items):
    def step(k):
        time.sleep(0.0005 * ((k * 7) % 5))  # later items often finish first
        return k * k

    assert list(ordered_map(step, n_items, workers)) == [k * k for k in range(n_items)]


def test_threads_used():
    names = set()

    def step(k):
        names.add(threading.current_thread().name)
        time.sleep(0.002)
        return k

    list(ordered_map(step, 40, 1))
    assert names == {threading.current_thread().name}  # one worker: no pool
    names.clear()
    list(ordered_map(step, 40, 3))
    assert 1 < len(names) <= 3 and all(name.startswith("fastpq") for name in names)
    names.clear()
    list(ordered_map(step, 2, 8))  # two items: two threads at most
    assert len(names) <= 2


def test_window_is_bounded():
    started = []
    workers = 2
    bound = TASKS_PER_WORKER * workers * IMAGES_PER_TASK
    results = ordered_map(lambda k: started.append(k) or k, 2000, workers)
    for consumed, k in enumerate(results, 1):
        if consumed % 50 == 0:
            time.sleep(0.01)  # a slow consumer: the threads must wait for it
        assert len(started) - consumed <= bound, (k, len(started))
    assert sorted(started) == list(range(2000))


@pytest.mark.parametrize("workers", [1, 3])
def test_first_error_in_input_order_is_raised(workers):
    done = []

    def step(k):
        if k in (41, 7):
            time.sleep(0.01 if k == 7 else 0)  # the later failure happens first
            raise ValueError(f"image {k}")
        done.append(k)
        return k

    got = []
    with pytest.raises(ValueError, match="image 7"):
        for value in ordered_map(step, 1000, workers):
            got.append(value)
    assert got == list(range(7))
    assert len(done) < 1000  # what was not started is not run


def test_notes_become_warnings_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_suspect_data(["first note", "second note"])
        warn_suspect_data([])
    assert [str(w.message) for w in caught] == ["first note", "second note"]
    assert all(w.category is SuspectDataWarning and w.filename == __file__ for w in caught)
