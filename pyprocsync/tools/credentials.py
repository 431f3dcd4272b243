"""Passwords and server URLs of the ``pyprocsync`` command, kept off its command line.

A password given as an argument shows in ``ps`` to every user of the machine, so the
command takes none: ``--redis`` URLs must not carry one, and the password comes, in
this order, from ``--password-file FILE``, from a prompt (``--ask-password``, when
standard input is a terminal), from ``$PYPROCSYNC_PASSWORD``, or from the URL in
``$PYPROCSYNC_REDIS_URL``. The first source found replaces any password the URL holds.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit, urlunsplit

from pyprocsync.exceptions import ProcSyncError
from pyprocsync.shells import redispy

__all__ = [
    "PASSWORD_ENV",
    "URL_ENV",
    "CredentialError",
    "add_password_options",
    "default_route_interface",
    "host_address",
    "password_of",
    "read_password",
    "redact",
    "resolve_url",
    "url_problem",
    "with_password",
]

#: Environment variable holding the server URL (it may carry the password).
URL_ENV = "PYPROCSYNC_REDIS_URL"
#: Environment variable holding the password.
PASSWORD_ENV = "PYPROCSYNC_PASSWORD"  # noqa: S105  # a variable's name
#: Where a password may come from, for messages.
SOURCES = f"${PASSWORD_ENV}, --password-file FILE or --ask-password"
_SCHEMES = ("redis", "rediss", "unix")


class CredentialError(ProcSyncError):
    """A password or URL that the command cannot use; the message says which and why
    (never the password)."""


class _RefusePassword(argparse.Action):
    """``--password [VALUE]``: recorded only to be refused with a pointer."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def add_password_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--password-file FILE`` and ``--ask-password`` to ``parser``, and a hidden
    ``--password`` that :func:`read_password` refuses."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"read the password from FILE (its first line); default ${PASSWORD_ENV}",
    )
    group.add_argument(
        "--ask-password",
        action="store_true",
        help="prompt for the password (standard input must be a terminal)",
    )
    parser.add_argument(
        "--password", nargs="?", action=_RefusePassword, default=False, help=argparse.SUPPRESS
    )


def read_password(args: argparse.Namespace) -> str | None:
    """The password the command line asks for: ``--password-file``, ``--ask-password``
    or ``$PYPROCSYNC_PASSWORD``, in this order; ``None`` when none is given.

    :raises CredentialError: ``--password`` was given; the file cannot be read or is
        empty; ``--ask-password`` without a terminal on standard input; an empty answer.
    """
    if args.password:
        raise CredentialError(
            f"--password is refused: a password on the command line shows in `ps`; use {SOURCES}"
        )
    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as source:
                password = source.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CredentialError(
                f"cannot read --password-file {args.password_file!r}: {reason}"
            ) from None
        if not password:
            raise CredentialError(
                f"--password-file {args.password_file!r}: its first line is empty"
            )
        return password
    if args.ask_password:
        if not sys.stdin.isatty():
            raise CredentialError(
                f"--ask-password needs a terminal on standard input; use ${PASSWORD_ENV} "
                "or --password-file FILE"
            )
        password = getpass.getpass("Redis password: ")
        if not password:
            raise CredentialError("no password entered")
        return password
    return os.environ.get(PASSWORD_ENV) or None


def password_of(url: str) -> str | None:
    """The password ``url`` carries (before ``@`` or as a ``password=`` query argument),
    or ``None``; a URL that does not split is taken to carry none."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password is not None:
        return unquote(password)
    for name, value in parse_qsl(parts.query):
        if name.lower() == "password":
            return value
    return None


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``: the one before ``@`` and a
    ``password=`` query argument. A URL that cannot be parsed is replaced as a whole
    by ``<unparsable URL>`` (a password in it could not be found to hide)."""
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return "<unparsable URL>"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else item
        for item in parts.query.split("&")
        if item
        for name in [item.split("=", 1)[0]]
    )
    parts = parts._replace(query=query)
    if password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _port_problem(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018  # urlsplit checks the port only when asked for it
    except ValueError:
        port = parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[-1]
        if port.isdigit():
            return f"port {port} is out of range (0-65535)"
        return f"port {port!r} is not a number"
    return None


def _place_problem(parts: SplitResult) -> str | None:
    """What is wrong with the scheme, host, socket path or database of ``parts``."""
    database = parts.path.strip("/")
    problem: str | None
    if parts.scheme not in _SCHEMES:
        problem = f"scheme {parts.scheme!r} is not one of redis://, rediss://, unix://"
    elif parts.scheme == "unix":
        problem = None if parts.path else "a unix:// URL needs the socket's path (unix:///PATH)"
    elif not parts.hostname:
        problem = "no host name (redis://HOST:PORT/DB)"
    elif database and not database.isdigit():
        problem = f"database {database!r} is not a number (redis://HOST:PORT/DB)"
    else:
        problem = None
    return problem


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a server URL, in words that never hold its password;
    ``None`` when redis-py can use it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{exc} (a bracket of an IPv6 address is missing)"
    if "@" in parts.path + parts.query + parts.fragment:
        # An unencoded "/", "?" or "#" in a password: no piece of the URL is safe to quote.
        return "it does not split into parts: percent-encode '/', '?', '#' and '@' in a password"
    problem = _place_problem(parts) or _port_problem(parts)
    if problem is not None:
        return problem
    try:
        redispy.check_url(url)
    except ValueError as exc:
        message = str(exc)
        password = password_of(url)
        if password:
            message = message.replace(password, "***").replace(quote(password, safe=""), "***")
        return message
    return None


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password (replacing one it holds, before ``@`` or
    as a ``password=`` query argument), keeping any user name."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else ""
    query = "&".join(
        item
        for item in parts.query.split("&")
        if item and item.split("=", 1)[0].lower() != "password"
    )
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def resolve_url(given: str | None, args: argparse.Namespace) -> str | None:
    """The server URL a command uses: ``given`` (from ``--redis``) or
    ``$PYPROCSYNC_REDIS_URL``, with the password of :func:`read_password` put in.

    :raises CredentialError: ``given`` carries a password (it would show in ``ps``); the
        URL is malformed (the message says how, naming ``--redis`` or the variable);
        :func:`read_password` failed.
    """
    url: str | None
    if given is not None:
        if password_of(given) is not None:
            raise CredentialError(
                f"the --redis URL carries a password, which `ps` shows: drop it from the "
                f"URL and use {SOURCES} (or put the whole URL in ${URL_ENV})"
            )
        url, origin = given, "--redis URL"
    else:
        url, origin = os.environ.get(URL_ENV) or None, f"${URL_ENV}"
    password = read_password(args)
    if url is None:
        return None
    problem = url_problem(url)
    if problem is not None:
        raise CredentialError(f"bad {origin}: {problem}")
    return url if password is None else with_password(url, password)


# -- this host's address ---------------------------------------------------------------------

_SIOCGIFADDR = 0x8915


def default_route_interface(route_table: str) -> str | None:
    """The interface of the IPv4 default route in ``route_table`` (the text of Linux's
    ``/proc/net/route``), or ``None``."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    return None


def _interface_address(interface: str) -> str | None:
    """The IPv4 address of ``interface`` (Linux ``SIOCGIFADDR``; sends nothing)."""
    try:
        import fcntl  # noqa: PLC0415  # POSIX only

        request = struct.pack("256s", interface.encode()[:15])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
    except (ImportError, OSError):
        return None
    return socket.inet_ntoa(reply[20:24])


def _resolved_address() -> str | None:
    """A non-loopback address this host's name resolves to, or ``None``."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return None
    for info in infos:
        address = str(info[4][0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


def host_address(bind: str) -> str:
    """The address other machines can use to reach a server bound to ``bind``.

    A specific address is itself. For a wildcard (``0.0.0.0``, ``::``, ``""``): the IPv4
    address of the interface of the default route (Linux: ``/proc/net/route`` and
    ``SIOCGIFADDR``), else a non-loopback address this host's name resolves to, else
    the host name. Only local tables are read; nothing is sent.
    """
    if bind not in ("0.0.0.0", "::", ""):  # noqa: S104  # recognised, not bound
        return bind
    try:
        with open("/proc/net/route", encoding="ascii") as table:
            interface = default_route_interface(table.read())
    except OSError:
        interface = None
    address = _interface_address(interface) if interface else None
    return address or _resolved_address() or socket.gethostname()
