"""The identify LED and the blink subsystem, on gpiozero's mock pins and temp brightness files.

Timing checks use generous tolerances: CI runs this on a loaded two-core machine, where a thread
(the blinker's or the test's) can be descheduled for about a second. Steps wait for what they
observe rather than sleep, and the periods a check tells apart (a pattern's pause from a blink's
off phase, a 5 s phase from a prompt stop) are longer than such a hiccup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from hw.led import FileLed, GpioLed, NullLed, make_led
from supervisor.blink import Blinker

ON = OFF = 0.02
SLACK = 1.5  # lateness we accept from a busy scheduler: a thread descheduled for about a second


def blink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == Blinker.name]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def timeline(pin) -> list[tuple[float, bool]]:
    """The pin's changes as (seconds since ``clear_states``, state): gpiozero stores deltas."""
    elapsed, out = 0.0, []
    for entry in list(pin.states):
        elapsed += entry.timestamp
        out.append((elapsed, bool(entry.state)))
    return out


def pulses(events: list[tuple[float, bool]]) -> list[tuple[float, float]]:
    """(on_at, off_at) for each completed on-period."""
    result, on_at = [], None
    for at, state in events:
        if state and on_at is None:
            on_at = at
        elif not state and on_at is not None:
            result.append((on_at, at))
            on_at = None
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@pytest.fixture
def blinkers() -> Iterator[Callable[..., Blinker]]:
    made: list[Blinker] = []

    def make(led, **timing) -> Blinker:
        blinker = Blinker(led, **timing)
        made.append(blinker)
        blinker.start()
        return blinker

    yield make
    for blinker in made:
        assert blinker.stop(2.0)
    assert blink_threads() == []


@pytest.fixture
def mock_pin():
    factory = MockFactory()
    led = make_led("gpio:17", pin_factory=factory)
    assert isinstance(led, GpioLed)
    return led, factory.pin(17)


def finished(blinker: Blinker, pin) -> Callable[[], bool]:
    return lambda: blinker.mode is None and not pin.state


@pytest.fixture
def idle_wait(monkeypatch) -> threading.Event:
    """Set once a blinker thread waits on its condition (idle, or a pattern's pause): a test hook
    telling that the thread has got going, where a fixed sleep could come too early."""
    waiting = threading.Event()
    original = Blinker.wait_on

    def wait_on(self, *args, **kwargs):
        waiting.set()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Blinker, "wait_on", wait_on)
    return waiting


# --- the blink pattern on a GPIO pin -----------------------------------------------------------
def test_blink_toggles_with_configured_periods_and_ends_off(blinkers, mock_pin):
    led, pin = mock_pin
    # Longer than a scheduling hiccup: a blinker thread woken late still finds the blink running.
    duration = 2.0
    blinker = blinkers(led, on_time=ON, off_time=OFF, duration=duration)
    pin.clear_states()
    blinker.blink()
    assert blinker.mode == "blink"
    wait_for(finished(blinker, pin))
    time.sleep(0.1)  # nothing more happens after the deadline

    events = timeline(pin)
    assert events[-1][1] is False
    changes = events[1:]
    assert [state for _, state in changes] == [i % 2 == 0 for i in range(len(changes))]
    on_periods = pulses(events)
    # 2 s / 40 ms = 50 cycles; a late thread only makes fewer (each phase is at least its length).
    assert 3 <= len(on_periods) <= duration / (ON + OFF) + 2, on_periods
    assert on_periods[0][0] < SLACK  # started at once
    assert on_periods[-1][1] < duration + SLACK  # stopped by the deadline
    on_lengths = [off - on for on, off in on_periods[:-1]]  # the last one may be cut short
    off_lengths = [nxt[0] - cur[1] for cur, nxt in zip(on_periods, on_periods[1:], strict=False)]
    # The median of ~50 phases shrugs off a few late wake-ups; 0.1 s still tells 20 ms from the
    # 0.2 s defaults.
    assert min(on_lengths) >= ON * 0.75 and median(on_lengths) < ON + 0.1, on_lengths
    assert min(off_lengths) >= OFF * 0.75 and median(off_lengths) < OFF + 0.1, off_lengths


def test_second_blink_extends_the_deadline_on_the_same_thread(blinkers, mock_pin):
    led, pin = mock_pin
    # The second blink comes 1.2 s in, and so blinking must go on for 1.2 s past the first deadline:
    # both spans longer than a scheduling hiccup (of the test, of the blinker).
    duration = 2.5
    blinker = blinkers(led, on_time=ON, off_time=OFF, duration=duration)
    assert len(blink_threads()) == 1
    pin.clear_states()
    start = time.monotonic()
    blinker.blink()
    wait_for(lambda: len(pulses(timeline(pin))) >= 3 and time.monotonic() - start >= 1.2)  # blinking
    assert len(blink_threads()) == 1
    extended_at = time.monotonic() - start
    blinker.blink()
    extended_by = time.monotonic() - start
    assert extended_by < duration, "the second blink came after the first one ended"
    expected_end = extended_at + duration
    assert len(blink_threads()) == 1
    # The deadline moved to (call time + duration): read off the mode, which needs no thread.
    wait_for(lambda: blinker.mode is None)
    assert time.monotonic() - start >= expected_end
    wait_for(finished(blinker, pin))

    on_periods = pulses(timeline(pin))
    last_off = on_periods[-1][1]
    assert last_off <= extended_by + duration + SLACK, on_periods
    assert any(on > duration + 0.05 for on, _ in on_periods), "no blinking past the first deadline"
    assert len(blink_threads()) == 1


def test_burst_of_blinks_keeps_one_thread_and_the_deadline_only_moves_later(blinkers, mock_pin):
    led, pin = mock_pin
    blinker = blinkers(led, on_time=ON, off_time=OFF, duration=5.0)
    blinker.blink()
    for _ in range(50):
        blinker.blink(0.05)
    assert len(blink_threads()) == 1
    time.sleep(0.3)
    assert blinker.mode == "blink"  # the 5 s deadline still holds


# --- kernel LED brightness files ---------------------------------------------------------------
def test_file_led_is_written_1_and_0_and_ends_0(blinkers, tmp_path: Path):
    brightness = tmp_path / "brightness"
    brightness.write_text("0")
    led = make_led(f"file:{brightness}")
    assert isinstance(led, FileLed)
    blinker = blinkers(led, on_time=0.05, off_time=0.05, duration=2.0)
    blinker.blink()
    # Waited for, not sampled while the blink lasts: a late thread or test misses no write.
    wait_for(lambda: brightness.read_text() == "1")
    wait_for(lambda: brightness.read_text() == "0")
    wait_for(lambda: blinker.mode is None)
    wait_for(lambda: brightness.read_text() == "0", timeout=30.0)
    time.sleep(0.1)
    assert brightness.read_text() == "0"


def test_bare_path_is_a_brightness_file_and_idle_blinker_leaves_it_alone(blinkers, tmp_path,
                                                                         idle_wait):
    brightness = tmp_path / "brightness"
    brightness.write_text("255")  # e.g. a kernel trigger's state: not ours to reset
    led = make_led(str(brightness))
    assert isinstance(led, FileLed)
    blinker = blinkers(led)
    assert idle_wait.wait(30)  # the thread is idle, past its start
    time.sleep(0.1)
    assert blinker.stop(1.0)
    assert brightness.read_text() == "255"


def test_file_led_survives_its_file_vanishing(blinkers, tmp_path: Path):
    brightness = tmp_path / "leds" / "brightness"
    brightness.parent.mkdir()
    brightness.write_text("0")
    led = make_led(str(brightness))
    brightness.unlink()
    brightness.parent.rmdir()
    blinker = blinkers(led, on_time=ON, off_time=OFF, duration=0.1)
    blinker.blink()
    wait_for(lambda: blinker.mode is None)
    assert blinker.health() == (True, "ok")


# --- make_led ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [None, "", "  ", "none", "NONE", "/dev/null", "file:/dev/null"])
def test_no_led_specs(spec):
    assert isinstance(make_led(spec), NullLed)


def test_missing_brightness_file_is_no_led(tmp_path: Path, caplog):
    missing = tmp_path / "no-such-led" / "brightness"
    with caplog.at_level(logging.WARNING, logger="hw.led"):
        assert isinstance(make_led(str(missing)), NullLed)
        assert isinstance(make_led(f"file:{missing}"), NullLed)
    assert str(missing) in caplog.text


def test_gpio_without_a_pin_factory_is_no_led(monkeypatch, caplog):
    model = Path("/proc/device-tree/model")
    if model.exists() and "raspberry" in model.read_text(errors="replace").lower():
        pytest.skip("this machine has real GPIO")
    import gpiozero

    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    with caplog.at_level(logging.WARNING, logger="hw.led"):
        led = make_led("gpio:17")
    assert isinstance(led, NullLed)
    assert "gpio:17" in caplog.text
    assert "gpio:17" in led.describe()


@pytest.mark.parametrize("spec", ["gpio:GPIO17", "GPIO:17", "gpio:BCM17", "gpio: 17 "])
def test_gpio_pin_names(spec):
    factory = MockFactory()
    led = make_led(spec, pin_factory=factory)
    assert isinstance(led, GpioLed)
    assert "GPIO17" in led.describe()
    led.on()
    assert factory.pin(17).state
    led.close()


@pytest.mark.parametrize(
    "spec", ["gpio:", "gpio:17 18", "gpio:-1", "gpio:nonsense", "file:", "led0", "usb:3", "x/y"]
)
def test_malformed_spec_raises_naming_it(spec):
    with pytest.raises(ValueError, match="LED spec") as excinfo:
        make_led(spec, pin_factory=MockFactory())
    assert spec.strip() in str(excinfo.value)


# --- lifecycle and health ----------------------------------------------------------------------
def test_stop_mid_blink_is_prompt_and_leaves_the_led_off_and_closed(blinkers, mock_pin):
    led, pin = mock_pin
    blinker = blinkers(led, on_time=5.0, off_time=5.0, duration=30.0)
    assert blinker.health() == (True, "ok")
    blinker.blink()
    wait_for(lambda: pin.state)  # in the middle of a 5 s on-phase
    assert blinker.health() == (True, "ok")
    started = time.monotonic()
    assert blinker.stop(4.0)
    assert time.monotonic() - started < 4.0  # less than the rest of the 5 s phase, even when late
    assert not pin.state
    assert led._led.closed
    healthy, reason = blinker.health()
    assert not healthy and "stopped" in reason
    assert blink_threads() == []


def test_stop_while_idle_is_prompt(blinkers, mock_pin, idle_wait):
    led, pin = mock_pin
    blinker = blinkers(led)
    assert idle_wait.wait(30)  # idle: an unwoken wait would last a 30 s beat slice
    time.sleep(0.05)
    started = time.monotonic()
    assert blinker.stop(4.0)
    assert time.monotonic() - started < 4.0
    assert blinker.health()[0] is False


def test_thread_beats_while_idle_and_while_blinking(blinkers, mock_pin):
    led, _ = mock_pin
    blinker = Blinker(led, on_time=0.3, off_time=0.3, duration=2.5)
    # Anything not beating for 1.5 s shows up as stuck: longer than a scheduling hiccup, shorter
    # than the 2 s each phase is watched.
    blinker.stuck_after = 1.5
    blinker.start()
    try:
        for phase in ("idle", "blink"):
            if phase == "blink":
                blinker.blink()
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                assert blinker.health() == (True, "ok"), phase
                time.sleep(0.05)
    finally:
        assert blinker.stop(2.0)


def test_blink_without_an_led_is_a_logged_no_op(blinkers, caplog):
    blinker = blinkers(NullLed())
    with caplog.at_level(logging.DEBUG, logger="supervisor.blink"):
        blinker.blink()
        blinker.start_pattern(4, 1.0)
    assert blinker.mode is None
    assert "no LED" in caplog.text
    assert blinker.health() == (True, "ok")


def test_bad_timings_are_rejected():
    with pytest.raises(ValueError):
        Blinker(NullLed(), on_time=0)
    blinker = Blinker(NullLed())
    with pytest.raises(ValueError):
        blinker.blink(-1)
    with pytest.raises(ValueError):
        blinker.start_pattern(0, 1.0)


# --- the connectivity pattern ------------------------------------------------------------------
def test_pattern_repeats_groups_then_stops_off(blinkers, mock_pin):
    led, pin = mock_pin
    blinker = blinkers(led, on_time=ON, off_time=OFF)
    pause, long_gap = 1.5, 1.2  # a pause is longer than a late wake-up within a group

    def gaps() -> list[float]:
        on_periods = pulses(timeline(pin))
        return [nxt[0] - cur[1] for cur, nxt in zip(on_periods, on_periods[1:], strict=False)]

    pin.clear_states()
    blinker.start_pattern(3, pause)
    wait_for(lambda: sum(gap > long_gap for gap in gaps()) >= 2)  # two pauses, then a third group
    stopped_at = time.monotonic()
    blinker.stop_pattern()
    wait_for(finished(blinker, pin), timeout=30.0)
    assert time.monotonic() - stopped_at < ON + OFF + SLACK

    found = gaps()
    long_gaps = [i for i, gap in enumerate(found) if gap > long_gap]
    assert len(long_gaps) >= 2, found
    assert all(found[i] >= pause - 0.01 for i in long_gaps), found
    # between two pauses there are exactly three blinks
    for first, second in zip(long_gaps, long_gaps[1:], strict=False):
        assert second - first == 3, found
    assert long_gaps[0] == 2, found


def test_api_blink_interrupts_the_pattern_pause_then_the_pattern_resumes(blinkers, mock_pin):
    led, pin = mock_pin
    blinker = blinkers(led, on_time=ON, off_time=OFF)
    pause, blink = 3.5, 1.5  # both longer than SLACK: a late thread is told from a missed blink
    blinker.start_pattern(1, pause)
    wait_for(lambda: pin.state)
    wait_for(lambda: not pin.state)
    time.sleep(0.1)  # well inside the pause
    pin.clear_states()
    blinker.blink(blink)
    assert blinker.mode == "blink"
    wait_for(lambda: blinker.mode != "blink")
    assert blinker.mode == "pattern"

    on_periods = pulses(timeline(pin))
    assert on_periods and on_periods[0][0] < SLACK, "the pause was not interrupted"
    in_blink = [p for p in on_periods if p[0] < blink]
    gaps = [nxt[0] - cur[1] for cur, nxt in zip(in_blink, in_blink[1:], strict=False)]
    assert len(in_blink) >= 3 and max(gaps) < SLACK, on_periods  # blinking, not the pattern's pause
    blinker.stop_pattern()
    wait_for(finished(blinker, pin), timeout=30.0)


def test_file_led_overwrites_longer_content_and_is_never_empty(tmp_path) -> None:
    from hw.led import FileLed

    path = tmp_path / "brightness"
    path.write_text("255")
    led = FileLed(path)
    led.on()
    assert path.read_text() == "1"
    led.off()
    assert path.read_text() == "0"
