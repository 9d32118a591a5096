"""Stopping cleanly on the signals that cluster schedulers send ahead of a kill: the one catcher of
stop signals, used by a run (``scorelift.run``) and by the job runner and its tasks (``scorelift.jobs``).

SLURM, Kubernetes and preemptible clouds send SIGTERM (SLURM's ``--signal`` often SIGUSR1) some
seconds before SIGKILL. On any of ``trainer.stop_signals`` (default SIGTERM, SIGUSR1, SIGINT) a
run finishes the step it is in, writes a checkpoint, records why it stopped in run_info.json and
exits with code 75 (``EXIT_STOPPED``: "resume me"). A second SIGINT (Ctrl+C twice) interrupts at
once; the last checkpoint written stays intact.

    with StopSignals(["SIGTERM", "SIGUSR1", "SIGINT"]) as stop:   # for the whole run
        ... build ...
        trainer = Trainer(callbacks=[keeper, ..., GracefulStop(stop, keeper)])   # outputs.graceful_stop
        trainer.fit(...)
        if stop.requested: raise stop.stopped(...)
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from .errors import ConfigError, RunStopped

log = logging.getLogger(__name__)

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
UNCATCHABLE = ("SIGKILL", "SIGSTOP")
LIGHTNING_TOUCHES = (signal.SIGTERM,)  # what Lightning's Trainer handles itself during fit
# Stop signals this soon after the previous one count as the same stop: one stop often arrives
# twice at once (GNU timeout signals its child and then the child's whole process group; a
# terminal's Ctrl+C reaches every process of the foreground group).
SAME_STOP_S = 1.0


def parse_stop_signals(names, key: str = "trainer.stop_signals") -> list[signal.Signals]:
    """The signals named in ``names`` (``SIGTERM``, ``TERM`` or a number); ConfigError otherwise."""
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{key}={names!r} must be a list of signal names, e.g. [SIGTERM,SIGUSR1,SIGINT] (or [] for none).")
    known = sorted(s.name for s in signal.valid_signals() if isinstance(s, signal.Signals))
    parsed = []
    for name in names:
        text = str(name).strip().upper()
        if text.isdigit():
            try:
                sig = signal.Signals(int(text))
            except ValueError:
                sig = None
        else:
            sig = getattr(signal.Signals, text if text.startswith("SIG") else "SIG" + text, None)
        if sig is None or sig.name in UNCATCHABLE:
            why = "cannot be caught by any process" if sig is not None else "is not a signal of this system"
            raise ConfigError(
                f"{key} has {name!r}, which {why}; name signals a process can catch, e.g. SIGTERM, SIGUSR1, "
                f"SIGUSR2, SIGINT (known here: {', '.join(n for n in known if n not in UNCATCHABLE)})."
            )
        parsed.append(sig)
    return parsed


class StopSignals:
    """Context manager: while it is active, the stop signals record that a stop was asked for
    (the first signal in ``received``; in ``count``, how many stops arrived, signals within
    ``SAME_STOP_S`` of the previous one counting as the same) and wake ``wait`` instead of killing
    the process; on exit the previous handlers are back. Outside the main thread (where Python
    cannot install handlers) it does nothing and the signals keep their usual effect.

    ``second_sigint_interrupts``: a second SIGINT (Ctrl+C twice) raises KeyboardInterrupt at once,
    as a run wants; a runner that stops its children itself counts it as one more stop instead.
    ``announce``: log the first stop (what the run will do about it)."""

    def __init__(self, names=DEFAULT_STOP_SIGNALS, second_sigint_interrupts: bool = True, announce: bool = True):
        self.signals = parse_stop_signals(list(names))
        self.second_sigint_interrupts = second_sigint_interrupts
        self.announce = announce
        self.received: signal.Signals | None = None
        self.count = 0
        self._last = float("-inf")  # time.monotonic() of the last stop signal
        self._wake = threading.Event()
        self._previous: dict[signal.Signals, object] = {}
        self._outer: dict[signal.Signals, object] = {}  # handlers before the run, of LIGHTNING_TOUCHES

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str | None:
        return self.received.name if self.received is not None else None

    def _handle(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.received is not None and sig == signal.SIGINT and self.second_sigint_interrupts:
            raise KeyboardInterrupt  # Ctrl+C twice: stop now, without the checkpoint
        now = time.monotonic()
        if now - self._last >= SAME_STOP_S:
            self.count += 1
        self._last = now
        if self.received is None:
            self.received = sig
            if self.announce:
                log.warning("Received %s: finishing the current step, then writing a checkpoint and stopping "
                            "(exit code 75: resume the run to continue).", sig.name)
        self._wake.set()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a stop signal ends the sleep at once."""
        if self._wake.wait(seconds):
            self._wake.clear()

    def install(self) -> None:
        """(Re)install the handlers. Lightning's Trainer installs its own SIGTERM handler when fit
        begins (it ends the run with exit code 0, as if finished); ``GracefulStop`` calls this
        then, which puts this one back, or, where SIGTERM is not a stop signal, the handler
        SIGTERM had before the run (by default: terminate)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in LIGHTNING_TOUCHES:
            self._outer.setdefault(sig, signal.getsignal(sig))
            if sig not in self.signals:
                signal.signal(sig, self._outer[sig] if self._outer[sig] is not None else signal.SIG_DFL)
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def stopped(self, run_dir, step: int | None, what: str) -> RunStopped:
        """The RunStopped error (one paragraph) for a stop at ``step``; ``what``: what was kept."""
        at = f" at step {step}" if step is not None else ""
        return RunStopped(
            f"Stopped by {self.name}{at}: {what} Resume with `scorelift resume={run_dir}` (exit code 75 means "
            f"\"stopped, resume me\")."
        )
