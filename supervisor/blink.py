"""Identify blinking (``POST /v1/blink``) and the no-connectivity LED pattern.

One long-lived thread owns the LED: requests only record what should happen (a deadline for the
API blink, the parameters of a repeating pattern) and wake it, so a burst of API calls can never
stack threads or interleave writes. Precedence: an API blink wins while its deadline runs; a
pattern that is set meanwhile resumes, from the start of a cycle, once that deadline has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from hw.led import LED, NullLed
from supervisor.subsystem import Subsystem

log = logging.getLogger(__name__)

#: Reference timings (``src/lib/blink.ts`` and ``POST /v1/blink``), in seconds.
ON_TIME = 0.2
OFF_TIME = 0.2
BLINK_DURATION = 15.0
#: The connectivity monitor's pattern: four blinks, then a 1 s pause, until connectivity returns.
NO_CONNECTIVITY_BLINKS = 4
NO_CONNECTIVITY_PAUSE = 1.0

Mode = Literal["blink", "pattern"]
_STOP, _DEADLINE, _DONE = "stop", "deadline", "done"


class Blinker(Subsystem):
    """Drives the identify LED from a single thread; see the module docstring for precedence."""

    name = "blink"

    def __init__(
        self,
        led: LED,
        *,
        on_time: float = ON_TIME,
        off_time: float = OFF_TIME,
        duration: float = BLINK_DURATION,
    ) -> None:
        super().__init__()
        for label, value in (("on_time", on_time), ("off_time", off_time), ("duration", duration)):
            if value <= 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        self.led = led
        self.on_time = on_time
        self.off_time = off_time
        self.duration = duration
        self._cond = threading.Condition()
        self._deadline: float | None = None  # monotonic end of the API blink; guarded by _cond
        self._pattern: tuple[int, float] | None = None  # (blinks, pause); guarded by _cond
        self._led_lock = threading.Lock()  # stop() may touch the LED while the thread lingers
        self._lit = False
        self._closed = False

    @property
    def available(self) -> bool:
        return not isinstance(self.led, NullLed)

    @property
    def mode(self) -> Mode | None:
        """What the LED is doing now: the API blink, the pattern, or nothing."""
        with self._cond:
            return self._mode_locked()

    # requests (any thread; they return at once) ------------------------------------------------
    def blink(self, duration: float | None = None) -> None:
        """Blink for ``duration`` seconds from now; during a blink, push the end out instead.

        The deadline only ever moves later, and the running on/off phase is not restarted.
        """
        seconds = self.duration if duration is None else duration
        if seconds <= 0:
            raise ValueError(f"blink duration must be positive, got {seconds!r}")
        if not self.available:
            log.debug("blink requested, but there is no LED: %s", self.led.describe())
            return
        with self._cond:
            end = time.monotonic() + seconds
            if self._deadline is None or end > self._deadline:
                self._deadline = end
            self._cond.notify_all()

    def start_pattern(self, blinks: int, pause: float) -> None:
        """Repeat (``blinks`` on/off blinks, then ``pause`` seconds) until :meth:`stop_pattern`.

        Calling it again with the same parameters is a no-op (as in the reference); new
        parameters take over at the next blink boundary.
        """
        if blinks < 1 or pause < 0:
            raise ValueError(f"bad pattern: blinks={blinks!r}, pause={pause!r}")
        if not self.available:
            log.debug("LED pattern requested, but there is no LED: %s", self.led.describe())
            return
        with self._cond:
            self._pattern = (blinks, pause)
            self._cond.notify_all()

    def stop_pattern(self) -> None:
        """End the pattern; the LED goes off within one on/off phase (an API blink carries on)."""
        with self._cond:
            self._pattern = None
            self._cond.notify_all()

    # lifecycle ------------------------------------------------------------------------------
    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread, then switch the LED off and release it (even if the join timed out)."""
        stopped = super().stop(timeout)
        with self._led_lock:
            if not self._closed:
                try:
                    self._switch_locked(False)
                finally:
                    self._closed = True
                    self.led.close()
        return stopped

    # the thread -----------------------------------------------------------------------------
    def run(self) -> None:
        log.info("identify LED: %s", self.led.describe())
        try:
            while not self.stopping:
                mode = self.mode
                if mode == "blink":
                    done = self._blink_cycle()
                elif mode == "pattern":
                    done = self._pattern_cycle()
                else:
                    self._switch(False)
                    done = self.wait_on(self._cond, lambda: self._mode_locked() is not None)
                if done:
                    break
        finally:
            self._switch(False)

    def _blink_cycle(self) -> bool:
        """One on/off cycle, cut short (LED off) at the deadline. True when asked to stop."""
        self._switch(True)
        outcome = self._hold(self.on_time)
        if outcome == _STOP:
            return True
        self._switch(False)
        if outcome == _DEADLINE:
            return False
        return self._hold(self.off_time) == _STOP

    def _pattern_cycle(self) -> bool:
        """One cycle of the pattern; yields to an API blink or a change between blinks."""
        with self._cond:
            pattern = self._pattern
        if pattern is None:
            return False
        blinks, pause = pattern

        def changed() -> bool:
            return self._mode_locked() != "pattern" or self._pattern != pattern

        for _ in range(blinks):
            with self._cond:
                if changed():
                    return False
            self._switch(True)
            if self.wait(self.on_time):
                return True
            self._switch(False)
            if self.wait(self.off_time):
                return True
        return self.wait_on(self._cond, changed, pause)

    def _hold(self, seconds: float) -> str:
        """Keep the LED as it is for ``seconds`` or until the blink deadline, whichever is first.

        Re-reads the deadline after each sleep, so an extension during the phase just lets the
        phase run to its natural end.
        """
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            with self._cond:
                deadline = self._deadline
            if deadline is None or deadline <= now:
                return _DEADLINE
            if now >= end:
                return _DONE
            if self.wait(min(end, deadline) - now):
                return _STOP

    def _mode_locked(self) -> Mode | None:
        if self._deadline is not None and time.monotonic() < self._deadline:
            return "blink"
        if self._pattern is not None:
            return "pattern"
        return None

    def _switch(self, lit: bool) -> None:
        with self._led_lock:
            self._switch_locked(lit)

    def _switch_locked(self, lit: bool) -> None:
        # Only write on a change: an LED never lit by us (say a kernel LED with a trigger) is
        # left alone, and an idle loop does not rewrite the brightness file.
        if self._closed or lit == self._lit:
            return
        if lit:
            self.led.on()
        else:
            self.led.off()
        self._lit = lit
