"""Who signed a request, and for which region: the credential scope of AWS Signature V4.

``Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request``
(or ``X-Amz-Credential`` in the query string of a presigned URL). The sandbox uses the key ID to
tell principals apart and the region to keep each region's resources apart, as AWS does; it does
not check signatures.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_SCOPE = re.compile(r"Credential=([^/,\s]+)/[^/]*/([^/]*)/")


def credential_scope(headers: Any, path: str = "") -> tuple[str, str]:
    """(access key ID, region) of a request (``headers``: anything with ``.get``, such as
    ``http.server``'s message); empty strings when it is not signed."""
    match = _SCOPE.search(headers.get("Authorization", "") or "")
    if match:
        return match.group(1), match.group(2)
    query = parse_qs(urlsplit(path).query)
    credential = unquote((query.get("X-Amz-Credential") or [""])[0]).split("/")
    if len(credential) >= 3:
        return credential[0], credential[2]
    return "", ""
