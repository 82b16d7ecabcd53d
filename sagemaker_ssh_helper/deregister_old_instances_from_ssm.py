"""``sm-ssh-deregister-instances``: remove managed instances that SSH Helper containers left behind.

A container deregisters its managed instance when it exits normally; a container that was killed
cannot, and its registration stays in SSM (offline) until someone removes it. An account holds at
most a few thousand (standard tier) or 20,000 (advanced tier) managed instances, and offline ones
count too. This command lists the offline instances that carry SSH Helper tags and have not been
seen for more than N days, shows them, asks for confirmation and deregisters them::

    sm-ssh-deregister-instances [--delete-older-than-n-days N] [--dry-run]
                                [--preapproving-deregistration] [--region R] [--profile P] [-v]

Only instances with an ``SSHResourceArn`` or ``SSHTimestamp`` tag are ever considered; the tag,
the PingStatus and the age are all checked from one paginated, server-side filtered
``DescribeInstanceInformation`` scan, so the only per-instance calls are the deregistrations.
Throttled deregistrations are retried with jittered exponential backoff; an instance that is
already gone counts as done.
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, Callable

from sagemaker_ssh_helper import aws, cli, retry
from sagemaker_ssh_helper.errors import AwsError, UsageError
from sagemaker_ssh_helper.manager import TAG_ARN, TAG_TIMESTAMP, ManagedInstance, SSMManager

logger = logging.getLogger(__name__)

PROG = "sm-ssh-deregister-instances"
DEFAULT_DAYS = 1.0
OFFLINE_STATUSES = ("ConnectionLost", "Inactive")
SSH_HELPER_TAG_KEYS = (TAG_ARN, TAG_TIMESTAMP)
MAX_ATTEMPTS = retry.MAX_ATTEMPTS
FATAL_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                         "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
                         "UnrecognizedClientException"})


def last_seen(instance: ManagedInstance) -> datetime | None:
    """When SSM last heard from the instance: its last ping, else its registration."""
    for value in (instance.last_ping, instance.registration_date):
        if isinstance(value, datetime):
            return value
    return None


def find_stale(manager: SSMManager, older_than_days: float,
               now: float | None = None) -> list[ManagedInstance]:
    """Offline SSH Helper instances not seen for more than ``older_than_days``, oldest first.

    One filtered scan (tag key and PingStatus on the server, age from the listing itself).
    """
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    infos = manager.describe([{"Key": "tag-key", "Values": list(SSH_HELPER_TAG_KEYS)},
                              {"Key": "PingStatus", "Values": list(OFFLINE_STATUSES)}])
    stale = []
    for info in infos:
        instance = ManagedInstance.from_info(info)
        seen = last_seen(instance)
        if instance.online:  # the filter already excludes these; never trust it blindly
            continue
        if seen is None or seen.timestamp() < cutoff:
            stale.append(instance)
    stale.sort(key=lambda i: (_epoch(last_seen(i)), i.instance_id))
    logger.info("%d offline SSH Helper instance(s) listed, %d not seen for %g day(s)",
                len(infos), len(stale), older_than_days)
    return stale


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _resource(instance: ManagedInstance) -> str:
    """``training-job/name`` from the instance's Name (the resource ARN SSH Helper sets)."""
    if instance.name.startswith("arn:"):
        try:
            return aws.parse_arn(instance.name).resource
        except UsageError:
            pass
    return instance.name or "-"


def format_table(instances: Sequence[ManagedInstance], now: float) -> str:
    rows = [("INSTANCE ID", "STATUS", "LAST SEEN (UTC)", "DAYS", "HOST", "RESOURCE")]
    for inst in instances:
        seen = last_seen(inst)
        when = seen.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if seen else "never"
        days = f"{(now - seen.timestamp()) / 86400:.1f}" if seen else "-"
        rows.append((inst.instance_id, inst.ping_status, when, days,
                     inst.computer_name or "-", _resource(inst)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in rows)


@dataclass
class Outcome:
    deregistered: int = 0
    gone: int = 0
    failed: int = 0
    retries: int = 0


def deregister_one(ssm: Any, instance_id: str, outcome: Outcome,
                   sleep: Callable[[float], None] = time.sleep,
                   rand: Callable[[], float] = random.random) -> None:
    """Deregister one instance, backing off on throttling; NotFound counts as done.

    Raises :class:`AwsError` for errors that will not go away by retrying.
    """
    def on_retry(e: Exception, attempt: int, delay: float) -> None:
        logger.info("%s: %s, retrying in %.1f s", instance_id, aws.error_code(e), delay)
        outcome.retries += 1

    if aws.deregister_managed_instance(ssm, instance_id, max_attempts=MAX_ATTEMPTS, sleep=sleep,
                                       rand=rand, on_retry=on_retry):
        outcome.deregistered += 1
    else:
        logger.info("%s is already deregistered", instance_id)
        outcome.gone += 1


def deregister_all(ssm: Any, instance_ids: Sequence[str], err: IO[str],
                   sleep: Callable[[float], None] = time.sleep,
                   rand: Callable[[], float] = random.random) -> Outcome:
    """Deregister each instance; stop at the first error that every later call would repeat."""
    outcome = Outcome()
    for instance_id in instance_ids:
        try:
            deregister_one(ssm, instance_id, outcome, sleep, rand)
        except AwsError as e:
            outcome.failed += 1
            print(f"{PROG}: {e}", file=err, flush=True)
            if aws.error_code(e.__cause__ or e) in FATAL_CODES:
                outcome.failed += len(instance_ids) - sum(
                    (outcome.deregistered, outcome.gone, outcome.failed))
                break
    return outcome


def confirm(count: int, stdin: IO[str], err: IO[str]) -> bool:
    """Ask on the terminal; only "y" or "yes" agree."""
    noun = "instance" if count == 1 else "instances"
    print(f"Deregister these {count} {noun} from SSM? [y/N] ", end="", file=err, flush=True)
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def is_approved_to_deregister(instance_count: int, argv: Sequence[str] | None = None,
                              stdin: IO[str] | None = None,
                              err: IO[str] | None = None) -> bool:
    """The seed's approval step: ``--preapproving-deregistration`` on the command line approves;
    otherwise the user is asked on the terminal. Without a terminal nothing is approved."""
    argv = sys.argv if argv is None else argv
    if "--preapproving-deregistration" in argv:
        return True
    stdin = sys.stdin if stdin is None else stdin
    if stdin is None or not stdin.isatty():
        return False
    return confirm(int(instance_count), stdin, sys.stderr if err is None else err)


def deregister(ssh_helper_instances: Sequence[str], ssm: Any = None,
               out: IO[str] | None = None, err: IO[str] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Deregister the given managed instance IDs (the seed's function) with the same backoff and
    already-gone handling as the command; prints one summary line and returns the counts."""
    ids = [str(i) for i in ssh_helper_instances]
    if ssm is None:
        session = aws.boto_session()
        ssm = session.client("ssm", region_name=aws.session_region(session),
                             config=aws.no_retry_config())
    outcome = deregister_all(ssm, ids, sys.stderr if err is None else err, sleep=sleep)
    print(f"Deregistered {outcome.deregistered}, already gone {outcome.gone}, "
          f"failed {outcome.failed} (of {len(ids)}).", file=sys.stdout if out is None else out,
          flush=True)
    return outcome


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        days = math.nan
    if math.isnan(days) or math.isinf(days) or days < 0:
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {value!r}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog=PROG, description=(
        "Deregister offline SSM managed instances that SSH Helper containers registered and "
        "that have not been seen for more than N days. Instances without SSH Helper tags are "
        "never touched."))
    parser.add_argument("--delete-older-than-n-days", type=_days, default=DEFAULT_DAYS,
                        metavar="N", help="only instances SSM has not heard from for more than "
                                          f"N days (default {DEFAULT_DAYS:g}; 0 = any offline)")
    parser.add_argument("--preapproving-deregistration", action="store_true",
                        help="do not ask for confirmation (for scripts and schedules)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only list what would be deregistered")
    cli.add_general_options(parser)
    return parser


def _no_retry_ssm(manager: SSMManager) -> Any:
    # Throttling is retried here with our own backoff, so botocore must not retry it too.
    return manager.session.client("ssm", region_name=manager.region_name,
                                  config=aws.no_retry_config())


def run(args: argparse.Namespace, stdin: IO[str], out: IO[str], err: IO[str],
        manager: SSMManager | None = None, now: float | None = None,
        sleep: Callable[[float], None] = time.sleep) -> int:
    now = time.time() if now is None else now
    if manager is None:
        session = aws.boto_session(args.profile, args.region)
        manager = SSMManager(region_name=args.region or aws.session_region(session),
                             session=session, progress=None)
    days = args.delete_older_than_n_days
    stale = find_stale(manager, days, now)
    if not stale:
        print(f"No offline SSH Helper instances older than {days:g} day(s) in "
              f"{manager.region_name}.", file=out, flush=True)
        return 0
    print(format_table(stale, now), file=out, flush=True)
    count = len(stale)
    if args.dry_run:
        print(f"Dry run: would deregister {count} instance(s).", file=out, flush=True)
        return 0
    if not args.preapproving_deregistration:
        if stdin is None or not stdin.isatty():
            raise UsageError(f"not deregistering {count} instance(s) without confirmation: "
                             "stdin is not a terminal; pass --preapproving-deregistration "
                             "to approve in advance (or --dry-run to only list)")
        if not confirm(count, stdin, err):
            print("Nothing deregistered.", file=out, flush=True)
            return 1
    outcome = deregister_all(_no_retry_ssm(manager), [i.instance_id for i in stale], err,
                             sleep=sleep)
    retried = f"; {outcome.retries} throttled call(s) retried" if outcome.retries else ""
    print(f"Deregistered {outcome.deregistered}, already gone {outcome.gone}, "
          f"failed {outcome.failed} (of {count}){retried}.", file=out, flush=True)
    return 0 if outcome.failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    def body(frame: cli.Command) -> int:
        args = frame.parse(build_parser(), cli.argv_or_sys(argv))
        for noisy in ("botocore", "boto3", "urllib3"):  # the scan's pages would bury the rest
            logging.getLogger(noisy).setLevel(logging.INFO if frame.debug else logging.WARNING)
        return run(args, sys.stdin, sys.stdout, sys.stderr)

    return cli.guarded_main(PROG, body, aws_action="ssm:DescribeInstanceInformation")


if __name__ == "__main__":
    sys.exit(main())
