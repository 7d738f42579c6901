"""What is stored does not grow with the number of increments."""

import os

from dcounter.counter import Counter
from dcounter.store import Store
from dcounter.writer import Writer


def _increments(writer, count, per_txn=1000):
    def job(txn):
        for _ in range(per_txn):
            txn.local("hits", 1, None, 0.0)
    for _ in range(count // per_txn):
        writer.submit(job)


def test_database_does_not_grow_with_increments(tmp_path):
    store = Store(str(tmp_path / "data"), sync="normal")
    store.open()
    origin, origins, keys = store.load()
    counter = Counter(origin)
    counter.load(origins, keys)
    writer = Writer(counter, store)
    writer.start()
    try:
        _increments(writer, 100_000)
        store.checkpoint()
        after_100k = os.path.getsize(store.path)
        _increments(writer, 100_000)
        store.checkpoint()
        after_200k = os.path.getsize(store.path)
    finally:
        writer.stop()
        store.close()
    assert counter.count("hits") == 200_000
    assert after_200k - after_100k < 64 * 1024, (after_100k, after_200k)

    reopened = Store(str(tmp_path / "data"))
    reopened.open()
    try:
        origin2, origins2, _ = reopened.load()
    finally:
        reopened.close()
    assert origin2 == origin
    assert origins2[origin].watermark == 200_000
    assert origins2[origin].prefix == {"hits": 200_000}
    assert origins2[origin].held == {}
