"""The SSRF guard of webhook URLs: which URLs the service may send a webhook to, and at which address.

A webhook URL comes from a caller, and the service sends a request to it from inside the
operator's network. Without a guard, ``webhook_url=http://169.254.169.254/...`` would read
cloud credentials, and ``http://10.0.0.5:6379/`` would reach internal services. So a URL is
admitted only when it is http(s) and every address its host resolves to is a public one,
unless ``allow_networks`` (config) admits the address. The check runs at submit (HTTP 422)
and again at delivery, where the connection is then pinned to the address that was checked,
so a DNS answer that changes in between (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port) -> addresses``; the default asks the system resolver (getaddrinfo).
Resolver = Callable[[str, int], list[str]]

#: Cloud instance-metadata endpoints, named in refusals: AWS/GCP/Azure/OpenStack (169.254.169.254),
#: AWS over IPv6 (fd00:ec2::254), AWS ECS task metadata (169.254.170.2), Alibaba Cloud (100.100.100.200).
#: Each is non-public anyway; the name only makes the message clearer.
METADATA_ADDRESSES = frozenset(
    map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200"))
)

#: Longest webhook URL taken, characters (the usual practical limit of URLs in browsers and proxies).
MAX_URL_LENGTH = 2048

#: Ports a webhook URL may name for a public receiver: HTTP's and HTTPS's. Other ports reach
#: whatever else listens on a host (mail, databases, admin consoles); an operator adds ports with
#: ``webhooks.allow_ports``, and a receiver inside ``allow_networks`` may use any port.
DEFAULT_WEBHOOK_PORTS: tuple[int, ...] = (80, 443)

#: IPv6 prefixes that carry an IPv4 address in their low bits and reach it through a translator:
#: the NAT64 well-known prefix (RFC 6052 §2.1) and 6to4 (RFC 3056, 2002:AABB:CCDD::/48, the IPv4
#: address in bits 16-47; ``IPv6Address.sixtofour`` extracts it).
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class WebhookRefused(ValidationFailed):
    """A webhook URL the service will not send to: not http(s), malformed, unresolvable, or
    resolving to a non-public address that ``allow_networks`` does not admit (HTTP 422,
    ``field`` = ``webhook_url``)."""


class WebhookHostUnresolved(WebhookRefused):
    """The webhook URL's host name does not resolve (HTTP 422 at submit; retried at delivery,
    since DNS may come back)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL: where to connect (``address``, ``port``) and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    address: str  # the checked IP address the connection is pinned to


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), by the system resolver.

    Raises:
        OSError (socket.gaierror): the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, or None: IPv4-mapped (``::ffff:10.0.0.1``),
    IPv4-compatible (``::10.0.0.1``, deprecated by RFC 4291 §2.5.5.1 but still routed by some
    stacks), NAT64 (``64:ff9b::10.0.0.1``) and 6to4 (``2002:0a00:0001::``). ``::`` and ``::1``
    are themselves, not IPv4."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("loopback", "cloud metadata", "link-local", "private",
    "multicast", "non-public"), or None when it is public.

    An IPv6 address that carries an IPv4 address (``embedded_ipv4``: mapped, compatible, NAT64,
    6to4) is judged by that IPv4 address, which is where a packet to it ends up.
    """
    ip = embedded_ipv4(ip) or ip
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # shared (100.64/10), reserved, unspecified, documentation ranges
        return "non-public"
    return None


def parse_networks(networks: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR strings ("127.0.0.1/32", "10.1.0.0/16", "::1/128"; a bare address means just it).

    Raises:
        ValueError: a string that is not a network.
    """
    return [ipaddress.ip_network(n, strict=False) for n in networks]


def _admitted(ip: IPAddress, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``allowed`` holds ``ip``, or the IPv4 address it carries (so an IPv4 entry admits
    the IPv4-mapped form of its addresses)."""
    forms = [ip] + ([v4] if (v4 := embedded_ipv4(ip)) is not None else [])
    return any(form in net for form in forms for net in allowed if net.version == form.version)


def check_webhook_url(
    url: str,
    allow_networks: Iterable[str] = (),
    resolve: Resolver = system_resolve,
    allow_ports: Iterable[int] = DEFAULT_WEBHOOK_PORTS,
) -> WebhookTarget:
    """Admit ``url`` for webhook delivery, or refuse it with the reason and what would work.

    Every address the host resolves to must be public or inside ``allow_networks``: a name
    with one private answer among public ones is refused, because a later lookup could return
    that one. The port must be in ``allow_ports`` unless every address is inside
    ``allow_networks``. The first address is the one to connect to.

    Raises:
        WebhookRefused: not http or https, credentials in the URL, no host, too long, the host
            does not resolve, an address is loopback, private, link-local, cloud metadata,
            multicast or otherwise non-public (directly or through an IPv6 form that carries
            it) and not admitted by ``allow_networks``, or a port outside ``allow_ports``.
    """

    def refuse(reason: str) -> WebhookRefused:
        return WebhookRefused(f"webhook_url {reason}", field="webhook_url")

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise refuse(f"must be http or https, got {scheme or 'no scheme'!r}")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry credentials; the service signs each webhook instead (webhook-signature)")
    host = parts.hostname
    if not host:
        raise refuse("has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
        addresses = [str(literal)]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except OSError:
            addresses = []
        if not addresses:
            raise WebhookHostUnresolved(
                f"webhook_url host {host!r} does not resolve; check the name", field="webhook_url"
            ) from None
    allowed = parse_networks(allow_networks)
    inside_allowed = True
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])  # drop an IPv6 zone ("fe80::1%eth0")
        admitted = _admitted(ip, allowed)
        inside_allowed = inside_allowed and admitted
        kind = address_kind(ip)
        if kind is not None and not admitted:
            via = "" if text == host else f" (it resolves to {text})"
            raise refuse(
                f"points to a {kind} address{via}; webhooks go to public addresses only. An operator can "
                "admit an internal receiver with webhooks.allow_networks in serve_config.yaml"
            )
    ports = sorted(set(allow_ports))
    if port not in ports and not inside_allowed:
        raise refuse(
            f"names port {port}; webhooks go to ports {', '.join(map(str, ports))}. An operator can admit "
            "another with webhooks.allow_ports in serve_config.yaml"
        )
    return WebhookTarget(url=url, scheme=scheme, host=host, port=port, address=addresses[0].split("%")[0])
