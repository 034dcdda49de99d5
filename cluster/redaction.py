"""Secrets out of what we print, log or write for people to read: spark-submit command lines, ``--conf``
pairs, environment and configuration dicts, URIs.

The rule is Spark's own: a value whose key matches ``spark.redaction.regex``'s default
(``(?i)secret|password|token|access[.]?key``) prints as ``*********(redacted)``, and so does the
``user:password`` part of a URI. Only what is shown is redacted: the command that runs keeps its values.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

REDACTION_REGEX = re.compile(r"(?i)secret|password|token|access[.]?key")   # Spark's spark.redaction.regex
REDACTED = "*********(redacted)"                                           # Spark's replacement text

# a key in KEY=VALUE: a Spark/Hadoop property, an environment variable, a -Dproperty or a --flag
_KEY = r"-*[A-Za-z_][\w.\-]*"
_PAIR = re.compile(rf"(?<![\w.\-/])({_KEY})=(\S+)")
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]*")   # a URI inside text


def sensitive(key: str) -> bool:
    """True when ``key`` names a secret (Spark's ``spark.redaction.regex``)."""
    return bool(REDACTION_REGEX.search(key))


def redact_uris(text: str) -> str:
    """``text`` with the ``user:password`` of every URI in it redacted (a user name alone stays)."""
    if "@" not in text or "://" not in text:
        return text
    from hdfs_io.uri import userinfo_span   # the storage layer's rule for where credentials sit

    def hide(m: re.Match) -> str:
        uri = m.group()
        span = userinfo_span(uri)
        if span is None or ":" not in uri[span[0]:span[1]]:
            return uri
        return uri[:span[0]] + REDACTED + uri[span[1]:]
    return URI.sub(hide, text)


def redact_text(text: str) -> str:
    """A string fit to print: one ``KEY=VALUE`` argument (a ``--conf`` pair, ``-Dk=v``, ``--flag=v``, an
    environment entry) with a sensitive key loses its whole value, blanks included; in any other text
    (a log line, a message) each such value up to the next blank does. URI credentials go everywhere."""
    text = str(text)
    key, sep, _ = text.partition("=")
    if sep and re.fullmatch(_KEY, key) and sensitive(key):
        return f"{key}={REDACTED}"
    text = _PAIR.sub(lambda m: f"{m.group(1)}={REDACTED}" if sensitive(m.group(1)) else m.group(), text)
    return redact_uris(text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line fit to print or log (``shlex.join(redact_argv(argv))``); the real one keeps its
    values."""
    return [redact_text(a) for a in argv]


def redact(value: Any, key: str = "") -> Any:
    """A copy of a configuration or environment (dicts, lists, strings, nested) fit to print: values
    under sensitive keys are redacted, strings as :func:`redact_text` does."""
    if key and sensitive(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
