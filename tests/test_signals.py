"""SIGTERM is handled as Ctrl-C by whatever handles SIGINT at that moment, and as a KeyboardInterrupt where
nothing in Python does: a process started with SIGINT ignored (a background job of a non-interactive shell,
as CI runners and scripts start commands) must still end on SIGTERM as interrupted. Pure logic, no Ray; the
end-to-end check is tests/test_interrupts.py."""

import signal

import pytest

from raylm.cluster.runtime import _interrupt


@pytest.fixture
def sigint():
    """Restores this process's SIGINT handler after the test sets its own."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_ignored_is_a_keyboard_interrupt(sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with pytest.raises(KeyboardInterrupt):
        _interrupt(signal.SIGTERM, None)


def test_sigint_default_is_a_keyboard_interrupt(sigint):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        _interrupt(signal.SIGTERM, None)


def test_a_python_sigint_handler_is_called_with_sigint(sigint):
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    _interrupt(signal.SIGTERM, None)
    assert seen == [signal.SIGINT]
