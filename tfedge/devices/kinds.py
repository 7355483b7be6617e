"""Device kinds: the registry from a device URL's scheme to the function that makes its device.

A kind is its own module in ``tfedge/devices/`` (a :class:`~tfedge.devices.protocol.Device`
subclass and a factory ``factory(url, ssh_config=None, **options) -> Device``) plus one
``register(Kind(...))`` line below. :func:`parse_device`, :data:`URL_FORMS` (the forms an error
lists), ``bench --device`` and the fleet read this table.

Example:
    >>> parse_device("local").url
    'local'
    >>> sorted(KINDS)
    ['local', 'ssh']
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from tfedge.devices.protocol import Device, RemoteError

__all__ = ["Kind", "KINDS", "register", "parse_device", "bad_url", "URL_FORMS", "NAME_RE"]

# A user name, host name, ssh Host alias or bare kind word.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Kind:
    """One device kind.

    Attributes:
        scheme: ``ssh`` for ``ssh://...`` URLs, or the whole URL for a bare kind (``local``).
        form: the accepted form, as an error lists it (``ssh://[USER@]HOST[:PORT]``).
        module: the module holding the factory, imported when a URL of this kind is parsed.
        factory: the function of ``module``: ``factory(url, ssh_config=None, **options)``.
        bare: True when the URL is the word itself (``local``), not ``SCHEME://...``.

    Example:
        >>> KINDS["ssh"].module
        'tfedge.devices.ssh'
    """

    scheme: str
    form: str
    module: str
    factory: str
    bare: bool = False


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a device kind to the table; a scheme is registered once.

    Example:
        >>> register(KINDS["local"])  # doctest: +SKIP
    """
    if kind.scheme in KINDS:
        raise ValueError(f"device kind {kind.scheme!r} is registered twice")
    KINDS[kind.scheme] = kind
    return kind


register(Kind("local", "local", "tfedge.devices.protocol", "local_device", bare=True))
register(
    Kind(
        "ssh",
        "ssh://[USER@]HOST[:PORT] (HOST may be a Host alias of your ssh config)",
        "tfedge.devices.ssh",
        "ssh_device",
    )
)

URL_FORMS = ", or ".join(kind.form for kind in KINDS.values())


def bad_url(url, why: str, hint: str | None = None) -> RemoteError:
    """The ``bad_url`` error: what is wrong with ``url``, the forms accepted and an example.

    Example:
        >>> bad_url("ftp://pi", "unknown scheme 'ftp'").kind
        'bad_url'
    """
    return RemoteError(
        f"bad device URL {url!r}: {why}; expected {URL_FORMS}",
        hint or "e.g. --device local, --device ssh://pi@192.168.1.20, --device ssh://tfedge-pi",
        kind="bad_url",
    )


def parse_device(url: str, ssh_config=None, **options) -> Device:
    """Turn a device URL into a :class:`Device` of the kind its scheme names.

    Args:
        url: one of :data:`URL_FORMS`: ``local`` or ``ssh://[USER@]HOST[:PORT]``. HOST is a host
            name, an IPv4 address, a bracketed IPv6 address, or a ``Host`` alias of the ssh
            config in use.
        ssh_config: an ssh config file to use instead of the user's (``ssh -F``).
        **options: passed on to the kind's factory (for ssh: ``connect_timeout``, ``timeout``,
            ``python``, ``remote_dir``, ``multiplex``; for local: ``timeout``).

    Returns:
        The kind's device, e.g. a :class:`~tfedge.devices.protocol.LocalDevice` or an
        :class:`~tfedge.devices.ssh.SshDevice`.

    Raises:
        RemoteError: (kind ``bad_url``) when the URL is not one of the accepted forms.

    Example:
        >>> parse_device("ssh://pi@raspberrypi:2222").port
        2222
    """
    if not isinstance(url, str):
        raise bad_url(url, "a device URL must be a string")
    text = url.strip()
    if "://" in text:
        scheme = text.partition("://")[0]
        kind = KINDS.get(scheme)
        if kind is None or kind.bare:
            raise bad_url(url, f"unknown scheme {scheme!r}")
    else:
        kind = KINDS.get(text)
        if kind is None or not kind.bare:
            schemes = [f"{k.scheme}://{text}" for k in KINDS.values() if not k.bare]
            hint = f"write {' or '.join(schemes)}" if NAME_RE.match(text) else None
            raise bad_url(url, "it has no scheme", hint)
    # Named, not imported at the top: the kind modules import this one (bad_url, URL_FORMS).
    factory = getattr(importlib.import_module(kind.module), kind.factory)
    return factory(text, ssh_config=ssh_config, **options)
