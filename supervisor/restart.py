"""When to respawn a crashed worker, and when to give up.

A worker that dies soon after it started is a "fast crash": something is wrong that a
respawn will not fix (a bug on a code path every start takes, a resource that is gone).
Those back off exponentially, and after MAX_FAST_CRASHES in a row the supervisor gives
up. A worker that ran for a while before dying is respawned at once.
"""

from dataclasses import dataclass

FAST_CRASH_S = 2.0
MAX_FAST_CRASHES = 5
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


@dataclass
class RestartPolicy:
    fast_crashes: int = 0

    def on_exit(self, ran_for_s: float) -> float | None:
        """Seconds to wait before the respawn, or None: stop trying."""
        if ran_for_s >= FAST_CRASH_S:
            self.fast_crashes = 0
            return 0.0
        self.fast_crashes += 1
        if self.fast_crashes >= MAX_FAST_CRASHES:
            return None
        return min(FIRST_DELAY_S * 2.0 ** (self.fast_crashes - 1), MAX_DELAY_S)
