"""The process's SORT/THREAD memory (imap/sortcache.py): answers only for the same view,
columns pruned of expunged messages, and the byte bound kept by dropping the least
recently used."""

from __future__ import annotations

from mailserver.imap.sortcache import ENTRY_BYTES, NUMBER_BYTES, KeyCache

A = ("/mail/a", 1, 7)
B = ("/mail/b", 1, 8)


def test_answer_only_for_the_same_view() -> None:
    kc = KeyCache()
    kc.keep_answer(A, "s", [1, 2, 3], [3, 1, 2], 3)
    assert kc.answer(A, "s", [1, 2, 3]) == [3, 1, 2]
    assert kc.answer(A, "s", [1, 2]) is None
    assert kc.answer(A, "s", [1, 2, 3, 4]) is None
    assert kc.answer(B, "s", [1, 2, 3]) is None  # another folder
    assert kc.answer(("/mail/a", 1, 9), "s", [1, 2, 3]) is None  # the folder made again
    assert kc.answer(A, "t", [1, 2, 3]) is None  # another command shape


def test_columns_are_pruned_to_the_view() -> None:
    kc = KeyCache()
    col = kc.column(A, "DATE")
    col.update({uid: uid for uid in range(1, 5001)})
    kc.grew(A, "DATE", col, range(4000, 5001))  # most were expunged since
    assert sorted(kc.column(A, "DATE")) == list(range(4000, 5001))


def test_bound_drops_the_least_recently_used() -> None:
    kc = KeyCache()
    kc.max_bytes = 2500 * ENTRY_BYTES["DATE"]
    for folder in (A, B):
        col = kc.column(folder, "DATE")
        col.update({uid: uid for uid in range(1, 1001)})
        kc.grew(folder, "DATE", col, range(1, 1001))
    assert kc.column(B, "DATE")
    assert kc.column(A, "DATE")  # used last now: B is the least recently used
    c = ("/mail/c", 1, 9)
    col = kc.column(c, "DATE")
    col.update({uid: uid for uid in range(1, 1001)})
    kc.grew(c, "DATE", col, range(1, 1001))
    assert kc.size() <= kc.max_bytes
    assert not kc.column(B, "DATE")  # the least recently used went
    assert kc.column(A, "DATE") and kc.column(c, "DATE")
    kc.keep_answer(A, "s", list(range(1000)), list(range(1000)), 1000)  # 2000 numbers
    assert kc.size() <= kc.max_bytes
    assert kc.answer(A, "s", list(range(1000))) is not None
    assert kc.size() >= 2000 * NUMBER_BYTES


def test_off_keeps_nothing() -> None:
    kc = KeyCache()
    kc.max_bytes = 0
    col = kc.column(A, "THREAD")
    col[1] = (0, None, None, ())
    kc.grew(A, "THREAD", col, [1])
    kc.keep_answer(A, "s", [1], [1], 1)
    assert kc.size() == 0
    assert not kc.column(A, "THREAD")
    assert kc.answer(A, "s", [1]) is None
