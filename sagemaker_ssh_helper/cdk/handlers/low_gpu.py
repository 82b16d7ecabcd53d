"""EventBridge handler: tell an SNS topic when a training job's GPUs sit idle.

SageMaker Debugger evaluates profiler rules such as ``LowGPUUtilization`` in processing jobs
that belong to a training job. On every state change of a processing job this handler finds the
training job it belongs to (``TrainingJobArn`` in the event, else from DescribeProcessingJob),
looks at that job's rule evaluation statuses, and when the rule evaluated by this processing job
is the low-GPU rule and reports ``IssuesFound``, publishes one message: which job, what the rule
said, and how to get into the job to look (``sm-ssh connect <job>.training.sagemaker``).

Environment: ``SNS_NOTIFICATION_TOPIC_ARN`` (required), ``LOW_GPU_RULE_NAME`` (default
``LowGPUUtilization``; matched against the rule configuration name and its status details).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

DEFAULT_RULE = "LowGPUUtilization"
ISSUES_FOUND = "IssuesFound"


def _client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def _console_domain(region: str) -> str:
    # The Lambda asset holds only this folder, so the partition table is repeated in brief.
    if region.startswith("cn-"):
        return f"{region}.console.amazonaws.cn"
    if region.startswith("us-gov-"):
        return f"{region}.console.amazonaws-us-gov.com"
    return f"{region}.console.aws.amazon.com"


def _name_from_arn(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def training_job_arn(detail: dict[str, Any], sagemaker: Any) -> str | None:
    """The training job a processing job evaluates rules for, if any."""
    arn = detail.get("TrainingJobArn")
    if arn:
        return str(arn)
    name = detail.get("ProcessingJobName") or _name_from_arn(detail.get("ProcessingJobArn", ""))
    if not name:
        return None
    try:
        described = sagemaker.describe_processing_job(ProcessingJobName=name)
    except Exception as e:  # the job may be gone already; nothing to report then
        logger.info("cannot describe processing job %s: %s", name, e)
        return None
    return described.get("TrainingJobArn") or None


def rule_statuses(job: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield from job.get("ProfilerRuleEvaluationStatuses") or []
    yield from job.get("DebugRuleEvaluationStatuses") or []


def low_gpu_findings(job: dict[str, Any], processing_job_arn: str,
                     rule: str = DEFAULT_RULE) -> list[dict[str, Any]]:
    """Statuses of ``job`` evaluated by ``processing_job_arn`` that report the low-GPU rule."""
    found = []
    for status in rule_statuses(job):
        if status.get("RuleEvaluationJobArn") != processing_job_arn:
            continue
        mentions = rule.lower() in str(status.get("RuleConfigurationName", "")).lower() or \
            rule.lower() in str(status.get("StatusDetails", "")).lower()
        if mentions and status.get("RuleEvaluationStatus") == ISSUES_FOUND:
            found.append(status)
    return found


def message(job: dict[str, Any], findings: list[dict[str, Any]], region: str) -> dict[str, str]:
    name = job["TrainingJobName"]
    url = (f"https://{_console_domain(region)}/sagemaker/home?region={region}"
           f"#/jobs/{name}")
    lines = [f"SageMaker Debugger reports low GPU utilization in training job {name} "
             f"({job.get('TrainingJobStatus', 'unknown status')}).", ""]
    for finding in findings:
        lines.append(f"Rule {finding.get('RuleConfigurationName')}: "
                     f"{finding.get('StatusDetails') or finding.get('RuleEvaluationStatus')}")
    lines += ["", f"Job: {url}",
              f"Connect to it: sm-ssh connect {name}.training.sagemaker",
              "Stop it if it only holds idle GPUs: "
              f"aws sagemaker stop-training-job --training-job-name {name} --region {region}"]
    subject = f"Low GPU utilization: {name}"
    return {"Subject": subject[:100], "Message": "\n".join(lines)}


def handler(event: dict[str, Any], context: Any = None, sagemaker: Any = None,
            sns: Any = None) -> dict[str, Any]:
    topic = os.environ["SNS_NOTIFICATION_TOPIC_ARN"]
    rule = os.environ.get("LOW_GPU_RULE_NAME") or DEFAULT_RULE
    detail = event.get("detail") or {}
    processing_arn = str(detail.get("ProcessingJobArn", ""))
    sagemaker = sagemaker or _client("sagemaker")
    arn = training_job_arn(detail, sagemaker)
    if not arn or not processing_arn:
        return {"notified": False, "reason": "not a rule evaluation job"}
    job = sagemaker.describe_training_job(TrainingJobName=_name_from_arn(arn))
    findings = low_gpu_findings(job, processing_arn, rule)
    if not findings:
        return {"notified": False, "reason": f"no {rule} issues", "trainingJob": arn}
    region = event.get("region") or arn.split(":")[3]
    sns = sns or _client("sns")
    published = sns.publish(TopicArn=topic, **message(job, findings, region))
    logger.info("notified %s about %s", topic, arn)
    return {"notified": True, "trainingJob": arn, "messageId": published.get("MessageId")}
