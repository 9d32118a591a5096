"""SLURM job states from ``squeue``, for clusters without the accounting database.

submitit asks ``sacct`` whether a job is still pending or running; where no accounting database
is configured (``AccountingStorageType=accounting_storage/none``, common on small clusters) every
call fails, submitit warns on each one and can never tell that a job which died without writing
its result has ended. ``squeue`` answers from the controller itself: a job it still lists is
pending, running or completing; one it no longer lists has ended.

    from scorelift.slurm_queue import use_squeue_for_submitit
    use_squeue_for_submitit()          # before submitting: submitit's SLURM jobs now ask squeue
"""

from __future__ import annotations

import subprocess
import time

ENDED = "ENDED"  # the state of a job squeue no longer lists: it finished, failed or was cancelled


def live_jobs(job_ids: list[str]) -> dict[str, str]:
    """SLURM id ("12_3" for an array task) -> state, for the jobs of ``job_ids`` (array ids or
    single ones) still pending, running or completing; {} when none is."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "--jobs", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # "Invalid job id specified": every one of them has left the queue
        return {}
    return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())


def squeue_watcher_class():
    """submitit's SLURM job watcher, answering from squeue (a class made here, so that importing
    this module does not import submitit)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueInfoWatcher(SlurmInfoWatcher):
        """Job states from ``squeue``; a registered job that squeue no longer lists has ENDED
        (submitit then reads its result file, or reports that it left none)."""

        def _make_command(self):
            pending = sorted(self._registered - self._finished)
            if not pending:
                return None
            return ["squeue", "-h", "-r", "-o", "%i|%T", "--jobs", ",".join(sorted({j.split("_")[0] for j in pending}))]

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
            listed = {}
            if proc.returncode == 0:  # non-zero: "Invalid job id specified", none is listed any more
                listed = dict(line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)
            for job_id in self._registered - self._finished:
                state = listed.get(job_id, ENDED).strip()
                self._info_dict[job_id] = {"JobID": job_id, "State": state, "NodeList": ""}
                if state == ENDED:
                    self._finished.add(job_id)
            self._last_status_check = time.time()

    return SqueueInfoWatcher


def use_squeue_for_submitit(delay_s: float = 20.0) -> None:
    """Make submitit's SLURM jobs (``SlurmJob``, used by its executors and by Hydra's submitit
    launcher) learn their state from squeue, every ``delay_s`` seconds at most."""
    from submitit.slurm.slurm import SlurmJob

    if type(SlurmJob.watcher).__name__ != "SqueueInfoWatcher":
        SlurmJob.watcher = squeue_watcher_class()(delay_s=int(delay_s))
