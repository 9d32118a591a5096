"""The one job runner: scorelift runs as processes, here or on SLURM, resumable and stoppable.

A sweep (``scorelift -m``) and the benchmark's cells are both lists of ``Job``s handed to
``run_jobs``; each job is a ``scorelift`` process with a folder of the one format ``folder``
describes (the run, its output, the processes it ran in, how it ended), so that any of them
resumes the same way. docs/clusters.md says how to use it; the modules:

    job.py         what a job is (its folder's key, its overrides, its fingerprint)
    folder.py      a job's folder and what it says (finished, stopped and resumable, failed)
    lifecycle.py   a job's process from its start to its records
    task.py        the submitit task that runs a few jobs in turn and stops them on a signal
    local.py       tasks on this machine (submitit's local executor), one GPU each
    slurm.py       tasks on a SLURM cluster as job arrays, watched with squeue
    gpu.py         the GPU sampler and the MPS daemon of a local run
    processes.py   child processes that die with the runner; the runner's stop signals
    runner.py      run_jobs: the entry point
"""

from .folder import finished_record, is_finished, job_state, wall_time
from .job import Job
from .runner import DEFAULT_STOP_GRACE_S, RunOutcome, foreign_folders, run_jobs
from .slurm import SlurmOptions

__all__ = ["DEFAULT_STOP_GRACE_S", "Job", "RunOutcome", "SlurmOptions", "finished_record", "foreign_folders",
           "is_finished", "job_state", "run_jobs", "wall_time"]
