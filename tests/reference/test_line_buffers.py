"""The large lines' read buffers: reused across threads and passes, never handed to two readers at once."""

from __future__ import annotations

from streamparity.reference.line_buffers import LineBuffers


def test_a_buffer_given_back_is_reused_at_the_next_length() -> None:
    pool = LineBuffers(keep=2)
    a = pool.take(100)
    assert len(a) == 100
    pool.give_back(a)
    b = pool.take(90)
    assert b is a and len(b) == 90  # resized in place, not a fresh allocation
    c = pool.take(50)
    assert c is not b  # b is still taken


def test_at_most_keep_buffers_are_kept_and_bytes_are_ignored() -> None:
    pool = LineBuffers(keep=1)
    a, b = pool.take(10), pool.take(10)
    pool.give_back(a)
    pool.give_back(b)
    pool.give_back(b"small line")
    assert pool.take(10) is a
    assert pool.take(10) is not b


def test_a_buffer_still_viewed_is_replaced_not_resized() -> None:
    pool = LineBuffers(keep=1)
    a = pool.take(10)
    view = memoryview(a)  # as a kept exception's frame may hold one
    pool.give_back(a)
    b = pool.take(20)
    assert b is not a and len(b) == 20 and len(view) == 10
    view.release()
