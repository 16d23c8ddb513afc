"""Long operations as persisted jobs: progress, logs, cancel, and recovery after a restart."""

from opentracy.jobs.runner import JobContext, JobInfo, JobRunner

__all__ = ["JobContext", "JobInfo", "JobRunner"]
