"""Which addresses an instance may be registered at: the registry's target policy.

Whoever registers an instance chooses where the gateway and every caller
will send that service's traffic, with its users' tokens. So the registry
refuses, by default, targets that are not service endpoints:

- addresses in the **denied networks**: link-local and cloud metadata
  endpoints (``169.254.0.0/16`` with ``169.254.169.254``, ``fe80::/10``,
  ``fd00:ec2::254``, ``100.100.100.200``), unless also in an **allowed
  network** (an operator's exception; denying ``0.0.0.0/0`` and ``::/0`` and
  allowing a few networks makes an allow-list);
- the **control plane's ports on the same host**: the registry's own port,
  configsvc's, the gateway's (traffic and admin) and Redis's, on a loopback,
  unspecified or local address, so that an instance can't expose
  ``/metrics`` and ``/routes`` of the gateway's admin port through its
  public port, nor write to configsvc or Redis with the gateway's requests.

A host name is resolved at registration and every address it resolves to
is checked (a name that does not resolve yet is accepted: the gateway
resolves it when it connects). IPv4-mapped IPv6 addresses
(``::ffff:169.254.169.254``) are checked as the IPv4 address they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import Iterable

from core.errors import Unprocessable

__all__ = ["DEFAULT_DENIED", "DEFAULT_RESERVED_PORTS", "TargetPolicy", "parse_networks"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Link-local (where clouds put their metadata services) and the metadata addresses
#: outside it (AWS's IPv6 one, Alibaba's).
DEFAULT_DENIED = "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32"
#: The control plane's default ports: gateway traffic and admin, configsvc, Redis.
DEFAULT_RESERVED_PORTS = "8080,8081,8888,6379"


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDR networks (or single addresses); ``ValueError`` naming a bad one."""
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not a network in CIDR form: {item!r}") from None
    return tuple(networks)


def parse_ports(text: str) -> frozenset[int]:
    """Comma-separated TCP ports; ``ValueError`` naming a bad one."""
    ports: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"not a TCP port (1-65535): {item!r}")
        ports.add(int(item))
    return frozenset(ports)


def _plain(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def local_addresses(extra: Iterable[str] = ()) -> frozenset[Address]:
    """This host's own addresses, as far as its name resolves, plus ``extra`` literals."""
    found: set[Address] = set()
    names = [socket.gethostname(), *extra]
    for name in names:
        with contextlib.suppress(OSError, UnicodeError):
            for *_, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
                with contextlib.suppress(ValueError):
                    found.add(_plain(ipaddress.ip_address(str(sockaddr[0]).split("%")[0])))
    return frozenset(found)


@dataclasses.dataclass(frozen=True)
class TargetPolicy:
    """The registry's rule for instance targets; :meth:`check` enforces it."""

    denied: tuple[Network, ...] = parse_networks(DEFAULT_DENIED)
    allowed: tuple[Network, ...] = ()
    reserved_ports: frozenset[int] = parse_ports(DEFAULT_RESERVED_PORTS)
    local: frozenset[Address] = frozenset()
    resolve_timeout: float = 2.0

    def _is_local(self, address: Address) -> bool:
        return address.is_loopback or address.is_unspecified or address in self.local

    def refusal(self, address: Address, port: int) -> tuple[str, str] | None:
        """Why ``address:port`` is refused, as (field, reason), or None when it is not."""
        address = _plain(address)
        if self._is_local(address) and port in self.reserved_ports:
            return (
                "port",
                f"port {port} on this host ({address}) is a control-plane port "
                "(registry, configsvc, gateway or Redis); see REGISTRY_RESERVED_PORTS",
            )
        for network in self.denied:
            if address.version == network.version and address in network:
                if any(address.version == a.version and address in a for a in self.allowed):
                    return None
                return (
                    "host",
                    f"{address} is in the denied network {network} (link-local and cloud "
                    "metadata addresses by default); see REGISTRY_DENY_NETWORKS and "
                    "REGISTRY_ALLOW_NETWORKS",
                )
        return None

    async def addresses(self, host: str) -> list[Address]:
        """The addresses ``host`` names: itself when a literal, else what it resolves to."""
        try:
            return [ipaddress.ip_address(host.split("%")[0])]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout):
                infos = await loop.getaddrinfo(host.rstrip("."), None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError):
            return []
        out: list[Address] = []
        for *_, sockaddr in infos:
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
        return out

    async def check(self, host: str, port: int) -> None:
        """:class:`Unprocessable` (422) when an instance at ``host:port`` is refused."""
        for address in await self.addresses(host):
            refused = self.refusal(address, port)
            if refused is not None:
                field, reason = refused
                shown = host if str(address) == host else f"{host} ({address})"
                raise Unprocessable(
                    f"instance target {shown}:{port} refused: {reason}",
                    errors=[{"field": field, "reason": reason}],
                )
