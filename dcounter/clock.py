"""The one clock object the node injects everywhere.

`monotonic()` measures intervals and timeouts; `time()` is wall time, for what must survive a
restart or cross machines (idempotency-key expiry, signature timestamps). Nothing else in the
package calls `time.monotonic` or `time.time` directly, so tests can drive a fake clock.
"""

import time


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
