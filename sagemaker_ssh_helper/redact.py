"""One redaction filter for every log SSH Helper writes (stderr, the job's log, the debug log).

Debug logging (``SM_SSH_DEBUG=true``, ``-v``) lets botocore print requests and responses: session
tokens, signatures, activation codes, Session Manager tokens. :func:`redact` replaces the value
of every secret it recognizes with ``****`` — in header lines (``x-amz-security-token:…``),
dicts and JSON (``'Authorization': b'…'``, ``"ActivationCode": "…"``), query strings
(``X-Amz-Signature=…``), environment dumps (``AWS_SESSION_TOKEN=…``) — and leaves the rest
intact, so the logs stay useful.

Every logging set-up of the package goes through :func:`basic_config` or :func:`protect`.
"""
from __future__ import annotations

import logging
import re
from typing import Any

MASK = "****"
SECRET_KEYS = (
    "x-amz-security-token", "x-amz-signature", "authorization", "signature",
    "activationcode", "activation-code", "tokenvalue", "sessiontoken", "session_token",
    "secretaccesskey", "secret_access_key", "aws_session_token", "aws_secret_access_key",
    "password", "vnc_password", "vncpassword", "cell-number",
)
_KEYS = "|".join(re.escape(k) for k in sorted(SECRET_KEYS, key=len, reverse=True))
# key, then a quoted value: 'Authorization': b'...', "TokenValue": "..."
_QUOTED = re.compile(rf"""(?ix)
    ( ["']? \b(?:{_KEYS})\b ["']? \s* [:=] \s* b? )   # the key and its separator
    (["'])  (?: \\. | (?!\2). )*  \2                 # the quoted value
""")
# key, then a bare value up to a delimiter: x-amz-security-token:..., X-Amz-Signature=...
_BARE = re.compile(rf"""(?ix)
    ( \b(?:{_KEYS})\b ["']? \s* [:=] \s* )
    (?! b?["'] | \*\*\*\* )
    [^\s,&;}}'"]+
""")
# "-code <value>" on a command line (amazon-ssm-agent -register -code ...)
_CODE_ARG = re.compile(r"(-code\s+)(?!\*\*\*\*)\S+")
# The whole Authorization header value, spaces included, when it is not quoted
_AUTH_LINE = re.compile(r"(?im)^(authorization\s*:\s*)(?!\*\*\*\*).+$")


def redact(text: str) -> str:
    """``text`` with the value of every recognized secret replaced by ``****``."""
    if not text:
        return text
    text = _AUTH_LINE.sub(rf"\g<1>{MASK}", text)
    text = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    text = _BARE.sub(rf"\g<1>{MASK}", text)
    return _CODE_ARG.sub(rf"\g<1>{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


FILTER = RedactingFilter()


def protect(handler: logging.Handler) -> logging.Handler:
    """Add the redaction filter to ``handler`` (once)."""
    if FILTER not in handler.filters:
        handler.addFilter(FILTER)
    return handler


def basic_config(**kwargs: Any) -> None:
    """``logging.basicConfig`` whose handlers redact secrets."""
    logging.basicConfig(**kwargs)
    for handler in logging.getLogger().handlers:
        protect(handler)
