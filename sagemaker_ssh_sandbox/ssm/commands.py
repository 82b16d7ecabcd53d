"""Run Command operations of the SSM stand-in: SendCommand and its invocations' life cycle.

Invocations are Pending until the agent picks them up (InProgress), then the agent reports
Success/Failed/TimedOut. Delivery expires after TimeoutSeconds + executionTimeout (AWS's rule),
turning Pending/InProgress invocations into TimedOut/DeliveryTimedOut.
"""
from __future__ import annotations

import re
from typing import Any

from sagemaker_ssh_sandbox.ssm.state import (
    PING_ONLINE,
    PLUGIN_NAME,
    RUN_SHELL_SCRIPT,
    TERMINAL,
    BackendBase,
    Command,
    Invocation,
    SSMError,
    fingerprint,
    iso,
    max_results,
    new_uuid,
    paginate,
    parse_iso,
    validation,
)

STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
PLUGIN_OUTPUT_LIMIT = 2500
DEFAULT_EXECUTION_TIMEOUT = 3600
_INSTANCE_ID = re.compile(r"^(i-(\w{8}|\w{17})|mi-\w{17})$")
_PARAMETERS = ("commands", "workingDirectory", "executionTimeout")
_STATUS_DETAILS = {"Pending": "Pending", "InProgress": "InProgress", "Success": "Success",
                   "Failed": "Failed", "Cancelled": "Cancelled"}


def _parameters(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value.get("commands"):
        raise SSMError("InvalidParameters",
                       "Parameter \"commands\" is required by document AWS-RunShellScript.")
    out: dict[str, list[str]] = {}
    for name, values in value.items():
        if name not in _PARAMETERS:
            raise SSMError("InvalidParameters",
                           f"Parameter \"{name}\" is not defined in document AWS-RunShellScript.")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SSMError("InvalidParameters", f"Parameter \"{name}\" must be a list of strings.")
        out[name] = list(values)
    timeout = out.get("executionTimeout", [str(DEFAULT_EXECUTION_TIMEOUT)])
    if len(timeout) != 1 or not re.fullmatch(r"[1-9][0-9]{0,5}", timeout[0]) \
            or int(timeout[0]) > 172800:
        raise SSMError("InvalidParameters",
                       "Parameter \"executionTimeout\" must be a number from 1 to 172800.")
    return out


def check_instance_ids(body: dict[str, Any]) -> None:
    """SendCommand's InstanceIds must look like EC2 or managed instance IDs: AWS validates the
    request (before authorizing it), so SageMaker's remote-debugging targets are refused."""
    ids = body.get("InstanceIds")
    if not isinstance(ids, list):
        return
    wrong = [i for i in ids if not isinstance(i, str) or not _INSTANCE_ID.match(i)]
    if wrong:  # e.g. SageMaker's remote-debugging targets: sessions only, no commands
        raise SSMError("ValidationException", (
            f"1 validation error detected: Value '[{', '.join(map(str, wrong))}]' at "
            "'instanceIds' failed to satisfy constraint: Member must satisfy constraint: "
            "[Member must have length less than or equal to 20, Member must have length "
            "greater than or equal to 10, Member must satisfy regular expression pattern: "
            "(^i-(\\w{8}|\\w{17})$)|(^mi-\\w{17}$)]"))


class CommandOps(BackendBase):
    """SendCommand, GetCommandInvocation, ListCommands, ListCommandInvocations + agent side."""

    invocation_visibility_delay: float = 0.2

    # ---- public operations -------------------------------------------------------------
    def op_SendCommand(self, body: dict[str, Any]) -> dict[str, Any]:
        document = body.get("DocumentName")
        if document != RUN_SHELL_SCRIPT:
            raise SSMError("InvalidDocument", f"Document {document} does not exist in your "
                           "account (the sandbox runs AWS-RunShellScript only).")
        params = _parameters(body.get("Parameters"))
        timeout = body.get("TimeoutSeconds", 3600)
        if not isinstance(timeout, int) or not 30 <= timeout <= 2592000:
            raise validation(timeout, "timeoutSeconds", "be between 30 and 2592000")
        comment = body.get("Comment", "")
        if not isinstance(comment, str) or len(comment) > 100:
            raise validation(comment, "comment", "have length less than or equal to 100")
        with self.lock:
            targets = self._resolve_targets(body)
            now = self.clock()
            execution = int(params.get("executionTimeout", [DEFAULT_EXECUTION_TIMEOUT])[0])
            cmd = Command(new_uuid(), document, comment, params,
                          list(body.get("InstanceIds") or []), list(body.get("Targets") or []),
                          timeout, now,
                          now + timeout + execution, self.next_seq())
            for instance_id in targets:
                cmd.invocations[instance_id] = Invocation(cmd.command_id, instance_id)
                self.enqueue(instance_id, {"Type": "RunCommand", "CommandId": cmd.command_id,
                                           "DocumentName": document, "Parameters": params})
            self.commands[cmd.command_id] = cmd
            return {"Command": self._command_json(cmd)}

    def _resolve_targets(self, body: dict[str, Any]) -> list[str]:
        ids, targets = body.get("InstanceIds"), body.get("Targets")
        if bool(ids) == bool(targets):
            raise SSMError("ValidationException",
                           "Specify exactly one of InstanceIds or Targets.")
        if targets:
            return self._instances_for_targets(targets)
        if not isinstance(ids, list) or len(ids) > 50:
            raise validation(ids, "instanceIds", "have length less than or equal to 50")
        if len(set(ids)) != len(ids):
            raise SSMError("DuplicateInstanceId", "Instance IDs must be unique.")
        bad = [i for i in ids if not self._is_reachable(i)]
        if bad:
            raise SSMError("InvalidInstanceId", f"Instances [[{', '.join(bad)}]] not in a valid "
                           f"state for account {self.account_id}")
        return list(ids)

    def _is_reachable(self, instance_id: Any) -> bool:
        inst = self.live_instance(instance_id)
        return inst is not None and self.ping_status(inst) == PING_ONLINE

    def _instances_for_targets(self, targets: Any) -> list[str]:
        if not isinstance(targets, list) or len(targets) > 5:
            raise validation(targets, "targets", "have length less than or equal to 5")
        found = [i for i in self.instances.values() if self._is_reachable(i.instance_id)]
        for target in targets:
            key, values = target.get("Key", ""), target.get("Values") or []
            if key == "InstanceIds":
                found = [i for i in found if i.instance_id in values]
            elif key.startswith("tag:"):
                found = [i for i in found if i.tags.get(key[4:]) in values]
            elif key == "tag-key":
                found = [i for i in found if any(v in i.tags for v in values)]
            else:
                raise SSMError("InvalidTarget", f"Target key {key} is not supported.")
        if not found:
            raise SSMError("InvalidTarget", "No managed instance matches the targets.")
        return [i.instance_id for i in found]

    def op_GetCommandInvocation(self, body: dict[str, Any]) -> dict[str, Any]:
        plugin = body.get("PluginName")
        with self.lock:
            cmd = self.commands.get(body.get("CommandId"))  # type: ignore[arg-type]
            inv = cmd.invocations.get(body.get("InstanceId")) if cmd else None  # type: ignore
            if cmd is None or inv is None or \
                    self.clock() - cmd.requested < self.invocation_visibility_delay:
                raise SSMError("InvocationDoesNotExist", "An invocation for this command and "
                               "instance does not exist (yet).")
            if plugin is not None and plugin != PLUGIN_NAME:
                raise SSMError("InvalidPluginName", f"Plugin {plugin} is not in the document.")
            self._expire(cmd)
            return self._get_invocation_json(cmd, inv)

    def op_ListCommands(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = max_results(body, 1, 50, 50)
        with self.lock:
            cmds = self._select_commands(body)
            page, token = paginate(cmds, lambda c: -c.seq, limit, body.get("NextToken"),
                                   fingerprint("ListCommands", body.get("CommandId"),
                                               body.get("InstanceId"), body.get("Filters")))
            out: dict[str, Any] = {"Commands": [self._command_json(c) for c in page]}
        if token:
            out["NextToken"] = token
        return out

    def op_ListCommandInvocations(self, body: dict[str, Any]) -> dict[str, Any]:
        limit = max_results(body, 1, 50, 50)
        details = bool(body.get("Details"))
        with self.lock:
            rows = [(c, inv) for c in self._select_commands(body) for inv in c.invocations.values()
                    if body.get("InstanceId") in (None, inv.instance_id)]
            numbered = list(enumerate(rows))
            page, token = paginate(numbered, lambda r: r[0], limit, body.get("NextToken"),
                                   fingerprint("ListCommandInvocations", body.get("CommandId"),
                                               body.get("InstanceId"), body.get("Filters")))
            out: dict[str, Any] = {"CommandInvocations": [
                self._invocation_json(c, inv, details) for _, (c, inv) in page]}
        if token:
            out["NextToken"] = token
        return out

    def _select_commands(self, body: dict[str, Any]) -> list[Command]:
        cmds = sorted(self.commands.values(), key=lambda c: -c.seq)
        if body.get("CommandId") is not None:
            cmds = [c for c in cmds if c.command_id == body["CommandId"]]
            if not cmds:
                raise SSMError("InvalidCommandId", "The command ID is not valid.")
        if body.get("InstanceId") is not None:
            cmds = [c for c in cmds if body["InstanceId"] in c.invocations]
        for flt in body.get("Filters") or []:
            cmds = [c for c in cmds if self._command_matches(c, flt)]
        for cmd in cmds:
            self._expire(cmd)
        return cmds

    def _command_matches(self, cmd: Command, flt: dict[str, Any]) -> bool:
        key, value = flt.get("key"), flt.get("value")
        if key == "Status":
            return self._command_status(cmd)[0] == value
        if key == "DocumentName":
            return cmd.document_name == value
        if key in ("InvokedAfter", "InvokedBefore"):
            when = parse_iso(value)
            if when is None:
                raise SSMError("InvalidFilterValue", f"{value} is not a valid date.")
            return cmd.requested >= when if key == "InvokedAfter" else cmd.requested <= when
        if key == "ExecutionStage":
            done = self._command_status(cmd)[0] in TERMINAL
            return (value == "Complete") == done
        raise SSMError("InvalidFilterKey", f"The filter key {key} is not valid.")

    # ---- life cycle ------------------------------------------------------------------
    def _expire(self, cmd: Command) -> None:
        if self.clock() <= cmd.expires_after:
            return
        for inv in cmd.invocations.values():
            if inv.status in ("Pending", "InProgress"):
                inv.status, inv.details, inv.ended = "TimedOut", "DeliveryTimedOut", self.clock()

    def deliver_command(self, instance_id: str, message: dict[str, Any]) -> bool:
        """Mark an invocation InProgress as the agent takes it; False if it expired."""
        cmd = self.commands.get(message["CommandId"])
        inv = cmd.invocations.get(instance_id) if cmd else None
        if cmd is None or inv is None or inv.status != "Pending":
            return False
        self._expire(cmd)
        if inv.status != "Pending":
            return False
        inv.status = inv.details = "InProgress"
        inv.started = self.clock()
        return True

    def agent_command_result(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            cmd = self.commands.get(body.get("CommandId"))  # type: ignore[arg-type]
            inv = cmd.invocations.get(body.get("InstanceId")) if cmd else None  # type: ignore
            if cmd is None or inv is None:
                raise SSMError("InvalidCommandId", "Unknown command invocation.")
            status = body.get("Status")
            if status not in ("Success", "Failed", "TimedOut"):
                raise validation(status, "status", "be Success, Failed or TimedOut")
            if inv.status in TERMINAL:  # expired or cancelled meanwhile: keep the first word
                return {}
            inv.status = str(status)
            inv.details = str(body.get("StatusDetails") or status)
            inv.response_code = int(body.get("ResponseCode", -1))
            inv.stdout = str(body.get("StandardOutputContent", ""))[:STDOUT_LIMIT]
            inv.stderr = str(body.get("StandardErrorContent", ""))[:STDERR_LIMIT]
            inv.started = parse_iso(body.get("ExecutionStartDateTime")) or inv.started
            inv.ended = parse_iso(body.get("ExecutionEndDateTime")) or self.clock()
            self.changed.notify_all()
            return {}

    # ---- rendering ---------------------------------------------------------------------
    def _command_status(self, cmd: Command) -> tuple[str, str]:
        states = [i.status for i in cmd.invocations.values()]
        if not states:
            return "Success", "Success"
        if any(s not in TERMINAL for s in states):
            started = any(s != "Pending" for s in states)
            return ("InProgress", "InProgress") if started else ("Pending", "Pending")
        if all(s == "Success" for s in states):
            return "Success", "Success"
        for status in ("Failed", "TimedOut", "Cancelled"):
            if status in states:
                details = next(i.details for i in cmd.invocations.values() if i.status == status)
                return status, {"DeliveryTimedOut": "Delivery Timed Out",
                                "ExecutionTimedOut": "Execution Timed Out"}.get(details, details)
        return "Failed", "Incomplete"

    def _command_json(self, cmd: Command) -> dict[str, Any]:
        status, details = self._command_status(cmd)
        invs = list(cmd.invocations.values())
        return {
            "CommandId": cmd.command_id, "DocumentName": cmd.document_name,
            "DocumentVersion": "$DEFAULT", "Comment": cmd.comment,
            "ExpiresAfter": cmd.expires_after, "Parameters": cmd.parameters,
            "InstanceIds": cmd.instance_ids, "Targets": cmd.targets,
            "RequestedDateTime": cmd.requested, "Status": status, "StatusDetails": details,
            "OutputS3Region": self.region, "OutputS3BucketName": "", "OutputS3KeyPrefix": "",
            "MaxConcurrency": "50", "MaxErrors": "0", "TargetCount": len(invs),
            "CompletedCount": sum(i.status in TERMINAL for i in invs),
            "ErrorCount": sum(i.status == "Failed" or i.details == "ExecutionTimedOut"
                              for i in invs),
            "DeliveryTimedOutCount": sum(i.details == "DeliveryTimedOut" for i in invs),
            "ServiceRole": "", "NotificationConfig": {"NotificationArn": "",
                                                      "NotificationEvents": [],
                                                      "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                       "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": cmd.timeout_seconds,
        }

    def _get_invocation_json(self, cmd: Command, inv: Invocation) -> dict[str, Any]:
        elapsed = ""
        if inv.started is not None and inv.ended is not None:
            elapsed = f"PT{max(0.0, inv.ended - inv.started):.3f}S"
        return {
            "CommandId": cmd.command_id, "InstanceId": inv.instance_id, "Comment": cmd.comment,
            "DocumentName": cmd.document_name, "DocumentVersion": "$DEFAULT",
            "PluginName": PLUGIN_NAME, "ResponseCode": inv.response_code,
            "ExecutionStartDateTime": iso(inv.started), "ExecutionElapsedTime": elapsed,
            "ExecutionEndDateTime": iso(inv.ended), "Status": inv.status,
            "StatusDetails": inv.details, "StandardOutputContent": inv.stdout,
            "StandardOutputUrl": "", "StandardErrorContent": inv.stderr, "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                       "CloudWatchOutputEnabled": False},
        }

    def _invocation_json(self, cmd: Command, inv: Invocation, details: bool) -> dict[str, Any]:
        inst = self.instances.get(inv.instance_id)
        out: dict[str, Any] = {
            "CommandId": cmd.command_id, "InstanceId": inv.instance_id,
            "InstanceName": inst.computer_name if inst else "", "Comment": cmd.comment,
            "DocumentName": cmd.document_name, "DocumentVersion": "$DEFAULT",
            "RequestedDateTime": cmd.requested, "Status": inv.status,
            "StatusDetails": inv.details, "TraceOutput": "", "StandardOutputUrl": "",
            "StandardErrorUrl": "", "CommandPlugins": [], "ServiceRole": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "",
                                       "CloudWatchOutputEnabled": False},
        }
        if details:
            plugin: dict[str, Any] = {
                "Name": PLUGIN_NAME, "Status": inv.status, "StatusDetails": inv.details,
                "ResponseCode": inv.response_code, "Output": self._plugin_output(inv),
                "StandardOutputUrl": "", "StandardErrorUrl": "", "OutputS3Region": self.region,
                "OutputS3BucketName": "", "OutputS3KeyPrefix": "",
            }
            for key, ts in (("ResponseStartDateTime", inv.started),
                            ("ResponseFinishDateTime", inv.ended)):
                if ts is not None:
                    plugin[key] = ts
            out["CommandPlugins"] = [plugin]
        return out

    @staticmethod
    def _plugin_output(inv: Invocation) -> str:
        text = inv.stdout
        if inv.stderr:
            text += ("\n" if text and not text.endswith("\n") else "") + "----------ERROR-------\n"
            text += inv.stderr
        return text[:PLUGIN_OUTPUT_LIMIT]

    def invocation(self, command_id: str, instance_id: str) -> Invocation | None:
        """Test helper: the invocation record (no visibility delay)."""
        with self.lock:
            cmd = self.commands.get(command_id)
            return cmd.invocations.get(instance_id) if cmd else None
