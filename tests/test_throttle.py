from dialguard.throttle import Throttle


def test_one_line_per_interval_giving_the_count_it_kept_quiet() -> None:
    now = [100.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.due() == 0  # the first failure logs at once
    for at in (100.5, 105.0, 109.9):
        now[0] = at
        assert throttle.due() is None
    now[0] = 110.0
    assert throttle.due() == 3
    now[0] = 125.0
    assert throttle.due() == 0
