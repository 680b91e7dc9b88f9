"""One job, batch by batch, through the stages: plan, route, hold, reserve, build, send,
fold, record (`run.py` names each)."""

from gateway.pipeline.batch import BatchOutcome, RunningJob
from gateway.pipeline.run import Pipeline, load_job

__all__ = ["BatchOutcome", "Pipeline", "RunningJob", "load_job"]
