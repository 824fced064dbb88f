"""Domain types shared by every package: statuses, the transition table, job specs, stored records.

This package is the leaf of the import graph: its modules import nothing of ours but each other,
so `storage`, `runner` and `web` may all depend on it. Every public name is re-exported here;
import from `runner.models`, not from its modules:

- `statuses`: JobStatus, the terminal statuses and the reference's transition table;
- `ids`: entity ids, task names, the name and workspace rules, timestamps in microseconds;
- `quantities`: Kubernetes quantities ('250m', '128Mi');
- `specs`: the request side, the job specification and the status updates;
- `records`: what storage returns (jobs, steps, tasks, log lines, secrets, results);
- `queries`: what callers ask storage for (filters, sort orders, a page, a log query);
- `output`: a task's output on its way into the store (chunks, line ids, progress);
- `resources`: what a step takes from the machine (Needs) and the rule that reads it off a spec.
"""

from runner.models.ids import (
    MAX_WORKSPACE_BYTES,
    NAME_PATTERN,
    NAME_RULE,
    WORKSPACE_PATTERN,
    base58,
    check_name,
    check_workspace,
    datetime_to_us,
    new_entity_id,
    new_task_name,
    now_us,
)
from runner.models.output import (
    AppendOutcome,
    LogAppend,
    LogProgress,
    OutputChunk,
    line_id,
    split_line_id,
)
from runner.models.quantities import parse_quantity
from runner.models.queries import (
    JobFilter,
    JobSort,
    LogQuery,
    Page,
    StepFilter,
    StepSort,
    StringCondition,
)
from runner.models.records import (
    JobRecord,
    JobState,
    LogLine,
    ResultRecord,
    SecretRecord,
    StepRecord,
    TaskRecord,
    WatchedStep,
)
from runner.models.resources import Needs, ResourceDemand, needs_of, shown_cpus, step_needs
from runner.models.specs import (
    MAX_NODES,
    ComputeResources,
    ComputeResourceSpec,
    ContainerSpec,
    CPUExecutorSpec,
    CreateJobRequest,
    DistributedGPUExecutorSpec,
    EnvironmentVariable,
    ExecutorSpec,
    GPUExecutorSpec,
    JobSecret,
    PlatformJobSpec,
    SecretRef,
    StatusUpdate,
    StepLifecycle,
    StepSpec,
    SubprocessExecutorSpec,
    TaskUpdate,
)
from runner.models.statuses import STARTABLE_STATUSES, TERMINAL_STATUSES, JobStatus

__all__ = [
    "MAX_NODES",
    "MAX_WORKSPACE_BYTES",
    "NAME_PATTERN",
    "NAME_RULE",
    "STARTABLE_STATUSES",
    "TERMINAL_STATUSES",
    "WORKSPACE_PATTERN",
    "AppendOutcome",
    "CPUExecutorSpec",
    "ComputeResourceSpec",
    "ComputeResources",
    "ContainerSpec",
    "CreateJobRequest",
    "DistributedGPUExecutorSpec",
    "EnvironmentVariable",
    "ExecutorSpec",
    "GPUExecutorSpec",
    "JobFilter",
    "JobRecord",
    "JobSecret",
    "JobSort",
    "JobState",
    "JobStatus",
    "LogAppend",
    "LogLine",
    "LogProgress",
    "LogQuery",
    "Needs",
    "OutputChunk",
    "Page",
    "PlatformJobSpec",
    "ResourceDemand",
    "ResultRecord",
    "SecretRecord",
    "SecretRef",
    "StatusUpdate",
    "StepFilter",
    "StepLifecycle",
    "StepRecord",
    "StepSort",
    "StepSpec",
    "StringCondition",
    "SubprocessExecutorSpec",
    "TaskRecord",
    "TaskUpdate",
    "WatchedStep",
    "base58",
    "check_name",
    "check_workspace",
    "datetime_to_us",
    "line_id",
    "needs_of",
    "new_entity_id",
    "new_task_name",
    "now_us",
    "parse_quantity",
    "shown_cpus",
    "split_line_id",
    "step_needs",
]
