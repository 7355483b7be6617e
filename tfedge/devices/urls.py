"""Device URLs: ``ssh://[USER@]HOST[:PORT]`` read into its parts, and the checks of user and host names.

Every part is checked before it reaches an ssh command line: a URL that is not one of
:data:`~tfedge.devices.kinds.URL_FORMS` is refused with what was wrong and the forms accepted.

Example:
    >>> parse_ssh_url("ssh://pi@raspberrypi:2222")
    ('pi', 'raspberrypi', 2222)
"""

import re

from tfedge.devices.kinds import NAME_RE, bad_url

__all__ = ["parse_ssh_url", "bad_url", "NAME_RE", "IPV6_RE"]

IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]$")


def parse_ssh_url(url) -> tuple[str | None, str, int | None]:
    """Split an ssh device URL into ``(user, host, port)``, each part checked.

    Args:
        url: ``ssh://[USER@]HOST[:PORT]``. HOST is a host name, an IPv4 address, a bracketed
            IPv6 address, or a ``Host`` alias of the ssh config in use.

    Returns:
        ``(user or None, host, port or None)``; an IPv6 host without its brackets.

    Raises:
        RemoteError: (kind ``bad_url``) when the URL is not one of the accepted forms.

    Example:
        >>> parse_ssh_url("ssh://[fe80::1]")
        (None, 'fe80::1', None)
    """
    if not isinstance(url, str):
        raise bad_url(url, "a device URL must be a string")
    text = url.strip()
    if "://" not in text:
        hint = f"write ssh://{text}" if NAME_RE.match(text) else None
        raise bad_url(url, "it has no scheme", hint)
    scheme, _, rest = text.partition("://")
    if scheme != "ssh":
        raise bad_url(url, f"unknown scheme {scheme!r}")
    if any(c in rest for c in "/?#") or any(c.isspace() for c in rest):
        raise bad_url(url, "a path, query or spaces follow the host")
    user = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if ":" in user:
            raise bad_url(
                url, "it carries a password", "tfedge uses ssh keys only: drop ':PASSWORD'"
            )
        if not NAME_RE.match(user):
            raise bad_url(url, f"the user name {user!r} is not a valid user name")
    port = None
    if rest.startswith("["):
        host, sep, tail = rest.partition("]")
        host += sep
        if not IPV6_RE.match(host):
            raise bad_url(url, f"{host!r} is not a bracketed IPv6 address")
        host = host[1:-1]
    else:
        host, colon, tail = rest.partition(":")
        tail = colon + tail
        if not NAME_RE.match(host or "-"):
            raise bad_url(url, f"the host {host!r} is not a host name, address or ssh alias")
    if tail:
        digits = tail[1:]
        if not tail.startswith(":") or not digits.isdigit() or not 0 < int(digits) < 65536:
            raise bad_url(url, f"the port {tail[1:]!r} is not a number from 1 to 65535")
        port = int(digits)
    return user, host, port
