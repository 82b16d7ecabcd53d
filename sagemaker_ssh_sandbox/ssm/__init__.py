"""AWS Systems Manager, emulated: the SSM service stand-in (activations, managed instances,
Run Command, Session Manager), the ``amazon-ssm-agent`` and ``session-manager-plugin``
stand-ins (``bin/``) and the wire protocol between them.

The agent and its helpers (``agent``, ``agent_api``, ``agent_worker``, ``channel``, ``shell``)
run inside job containers: standard library only.
"""
