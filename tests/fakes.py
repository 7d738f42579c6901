"""Test doubles of our own making: a clock that moves only when told."""


class FakeClock:
    """`monotonic()` and `time()` advance together, and only through `advance`."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0):
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._monotonic += seconds
        self._wall += seconds
