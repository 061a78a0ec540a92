"""Event -> frame integration against hand computations on tiny event streams."""

import numpy as np
import pytest

from snnexp.data.frames import events_to_frames


def ev(*rows):
    """rows of (x, y, t_us, p) -> four arrays."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def test_split_by_number_equal_counts_last_slice_takes_the_rest():
    # 7 events, T = 3: d = 7 // 3 = 2 -> slices [0, 2), [2, 4), [4, 7)
    x, y, t, p = ev((0, 0, 10, 1), (1, 0, 20, 0), (1, 1, 30, 1), (1, 1, 40, 1),
                    (0, 1, 50, 0), (0, 1, 60, 0), (1, 0, 70, 1))
    f = events_to_frames(x, y, t, p, sensor_size=(2, 2), T=3, split_by="number")
    assert f.shape == (3, 2, 2, 2) and f.dtype == np.uint16
    expected = np.zeros((3, 2, 2, 2), dtype=np.uint16)  # [frame, polarity, y, x]
    expected[0, 1, 0, 0] = 1  # event 0: x0 y0 p1
    expected[0, 0, 0, 1] = 1  # event 1: x1 y0 p0
    expected[1, 1, 1, 1] = 2  # events 2, 3: x1 y1 p1
    expected[2, 0, 1, 0] = 2  # events 4, 5: x0 y1 p0
    expected[2, 1, 0, 1] = 1  # event 6: x1 y0 p1
    np.testing.assert_array_equal(f, expected)


def test_fewer_events_than_frames_still_gives_T_frames():
    # 2 events, T = 4: d = 0, SpikingJelly's rule puts everything in the last slice
    x, y, t, p = ev((0, 0, 5, 1), (1, 1, 9, 0))
    f = events_to_frames(x, y, t, p, (2, 2), T=4, split_by="number")
    assert f.shape == (4, 2, 2, 2)
    assert f[:3].sum() == 0 and f[3, 1, 0, 0] == 1 and f[3, 0, 1, 1] == 1
    empty = events_to_frames(*ev(), (2, 2), T=4, split_by="time", bin_ms=5)
    assert empty.shape == (4, 2, 2, 2) and empty.sum() == 0


def test_split_by_time_fixed_bins_from_the_first_event():
    # bin 5 ms, T = 3, t0 = 1000 us: relative times 0, 2000, 5000, 10000, 15000 -> bins 0, 0, 1, 2, (3: dropped)
    x, y, t, p = ev((0, 0, 1000, 1), (0, 0, 3000, 1), (1, 0, 6000, 0), (1, 1, 11000, 1), (0, 1, 16000, 1))
    f = events_to_frames(x, y, t, p, (2, 2), T=3, split_by="time", bin_ms=5)
    expected = np.zeros((3, 2, 2, 2), dtype=np.uint16)
    expected[0, 1, 0, 0] = 2
    expected[1, 0, 0, 1] = 1
    expected[2, 1, 1, 1] = 1
    np.testing.assert_array_equal(f, expected)
    # a recording shorter than T bins: trailing frames stay empty
    f = events_to_frames(x[:2], y[:2], t[:2], p[:2], (2, 2), T=5, split_by="time", bin_ms=5)
    assert f[0].sum() == 2 and f[1:].sum() == 0


def test_split_by_time_equal_slices_of_the_recording():
    # t = 0, 10, 20, 30 us, T = 2: duration 31, slice = t * 2 // 31 -> 0, 0, 1, 1
    x, y, t, p = ev((0, 0, 0, 1), (1, 0, 10, 1), (0, 1, 20, 1), (1, 1, 30, 0))
    f = events_to_frames(x, y, t, p, (2, 2), T=2, split_by="time")
    assert f[0, 1].tolist() == [[1, 1], [0, 0]]
    assert f[1, 1].tolist() == [[0, 0], [1, 0]] and f[1, 0].tolist() == [[0, 0], [0, 1]]


def test_downsampling_sums_pixel_blocks():
    # sensor 5 x 3 (W x H), factor 2 -> frames of 2 x 3 (H x W); (x=3, y=1) -> (1, 0); (x=4, y=2) -> (2, 1)
    x, y, t, p = ev((3, 1, 0, 1), (2, 0, 1, 1), (4, 2, 2, 0))
    f = events_to_frames(x, y, t, p, (5, 3), T=1, split_by="number", downsample=2)
    assert f.shape == (1, 2, 2, 3)
    assert f[0, 1].tolist() == [[0, 2, 0], [0, 0, 0]]
    assert f[0, 0].tolist() == [[0, 0, 0], [0, 0, 1]]


def test_unknown_split_method_is_refused():
    with pytest.raises(ValueError, match="split_by"):
        events_to_frames(*ev((0, 0, 0, 1)), (2, 2), T=2, split_by="count")
