"""The job broker's durable layer: job records (`jobs`), work queues (`queue`), the worker
protocol (`worker`). All state lives in Redis; the gRPC API and the stage-driving workers are
built on these modules.
"""

from talkingface.broker.jobs import Job, JobStore
from talkingface.broker.queue import Delivery, WorkQueue
from talkingface.broker.worker import Cancelled, LeaseLost, run_once

__all__ = ["Cancelled", "Delivery", "Job", "JobStore", "LeaseLost", "WorkQueue", "run_once"]
