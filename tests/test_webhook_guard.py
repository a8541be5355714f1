"""The SSRF guard of webhook URLs, checked as a function: no request is sent to any address here.

DNS is outside this machine, so names other than the system resolver's numeric forms and
``localhost`` go through ``FakeResolver``, a fake named as one.
"""

import ipaddress

import pytest

from webhooks.guard import (
    embedded_ipv4,
    WebhookHostUnresolved,
    WebhookRefused,
    address_kind,
    check_webhook_url,
    system_resolve,
)


class FakeResolver:
    """A fake DNS: fixed answers per host name; unknown names do not resolve."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError("name does not resolve")
        return self.answers[host]


@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.1/hook", "private"),
    ("http://192.168.1.20/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://169.254.10.10/hook", "link-local"),
    ("http://100.64.0.1/hook", "non-public"),
    ("http://0.0.0.0/hook", "private"),
    ("http://[::1]/hook", "loopback"),
    ("http://[fd00:ec2::254]/hook", "cloud metadata"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://224.0.0.1/hook", "multicast"),
])
def test_non_public_literal_addresses_are_refused_and_named(url, kind):
    with pytest.raises(WebhookRefused) as info:
        check_webhook_url(url, resolve=FakeResolver({}))
    assert f"a {kind} address" in info.value.message
    assert "allow_networks" in info.value.message  # says what would admit it
    assert info.value.details["field"] == "webhook_url"


def test_names_that_resolve_to_private_addresses_are_refused():
    dns = FakeResolver({"hooks.internal.example": ["10.1.2.3"],
                        "rebind.example": ["93.184.215.14", "192.168.0.7"],
                        "v6.example": ["fd12::5"]})
    for host, answer in [("hooks.internal.example", "10.1.2.3"), ("rebind.example", "192.168.0.7"),
                         ("v6.example", "fd12::5")]:
        with pytest.raises(WebhookRefused) as info:
            check_webhook_url(f"https://{host}/hook", resolve=dns)
        assert f"it resolves to {answer}" in info.value.message and "private address" in info.value.message
    assert [h for h, _ in dns.asked] == ["hooks.internal.example", "rebind.example", "v6.example"]
    assert dns.asked[0][1] == 443


@pytest.mark.parametrize("host, address, kind", [
    ("localhost", "127.0.0.1", "loopback"),
    ("167772161", "10.0.0.1", "private"),     # a decimal IPv4 the resolver accepts as a name
    ("0x0a000001", "10.0.0.1", "private"),    # hexadecimal
    ("10.1", "10.0.0.1", "private"),          # inet_aton's short form
    ("0x7f.1", "127.0.0.1", "loopback"),
])
def test_the_system_resolver_numeric_forms_and_localhost_are_caught(host, address, kind):
    # These resolve on this machine without any network: they are the classic guard bypasses.
    with pytest.raises(WebhookRefused) as info:
        check_webhook_url(f"http://{host}/hook", resolve=system_resolve)
    assert f"a {kind} address (it resolves to {address})" in info.value.message


@pytest.mark.parametrize("url, words", [
    ("ftp://example.com/hook", "must be http or https, got 'ftp'"),
    ("file:///etc/passwd", "must be http or https, got 'file'"),
    ("gopher://example.com/", "must be http or https"),
    ("example.com/hook", "must be http or https, got 'no scheme'"),
    ("http://user:pw@example.com/hook", "must not carry credentials"),
    ("http:///hook", "has no host"),
    ("http://example.com:99999/", "is not a valid URL"),
    ("http://example.com/" + "a" * 2100, "longer than 2048"),
])
def test_malformed_or_non_http_urls_are_refused(url, words):
    with pytest.raises(WebhookRefused) as info:
        check_webhook_url(url, resolve=FakeResolver({"example.com": ["93.184.215.14"]}))
    assert words in info.value.message


def test_unresolvable_name_is_its_own_refusal():
    with pytest.raises(WebhookHostUnresolved) as info:
        check_webhook_url("https://nowhere.example/hook", resolve=FakeResolver({}))
    assert "does not resolve" in info.value.message


def test_public_name_is_admitted_and_pinned_to_its_first_address():
    dns = FakeResolver({"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    target = check_webhook_url("https://hooks.example.com/a?b=1", resolve=dns)
    assert (target.scheme, target.host, target.port, target.address) == (
        "https", "hooks.example.com", 443, "93.184.215.14")


def test_ports_beyond_80_and_443_need_the_operator():
    dns = FakeResolver({"hooks.example.com": ["93.184.215.14"], "receiver.svc.cluster.local": ["10.20.3.4"]})
    with pytest.raises(WebhookRefused, match="port 8443; webhooks go to ports 80, 443") as info:
        check_webhook_url("https://hooks.example.com:8443/a", resolve=dns)
    assert "webhooks.allow_ports" in info.value.message
    with pytest.raises(WebhookRefused, match="port 6379"):
        check_webhook_url("http://hooks.example.com:6379/", resolve=dns)
    assert check_webhook_url("http://hooks.example.com:80/", resolve=dns).port == 80
    target = check_webhook_url("https://hooks.example.com:8443/a", resolve=dns, allow_ports=[443, 8443])
    assert (target.port, target.address) == (8443, "93.184.215.14")
    # A receiver inside allow_networks is the operator's own: any port.
    assert check_webhook_url("http://receiver.svc.cluster.local:9000/h", ["10.20.0.0/16"], dns).port == 9000


@pytest.mark.parametrize("literal, kind", [
    ("64:ff9b::7f00:1", "loopback"),            # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),              # NAT64 of 10.0.0.1
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),   # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "loopback"),              # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "cloud metadata"),    # 6to4 of 169.254.169.254
    ("2002:c0a8:101::", "private"),             # 6to4 of 192.168.1.1
    ("::7f00:1", "loopback"),                   # IPv4-compatible ::127.0.0.1
    ("::a00:1", "private"),                     # IPv4-compatible ::10.0.0.1
    ("::ffff:a9fe:a9fe", "cloud metadata"),     # IPv4-mapped
])
def test_ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it(literal, kind):
    assert address_kind(ipaddress.ip_address(literal)) == kind
    with pytest.raises(WebhookRefused, match=kind):
        check_webhook_url(f"http://[{literal}]/hook")
    dns = FakeResolver({"sneaky.example.com": ["93.184.215.14", literal]})  # the same form from DNS
    with pytest.raises(WebhookRefused, match=kind):
        check_webhook_url("https://sneaky.example.com/hook", resolve=dns)


def test_public_ipv4_through_nat64_or_6to4_is_admitted_and_plain_ipv6_is_not_unwrapped():
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::5db8:d70e")) == ipaddress.ip_address("93.184.215.14")
    assert check_webhook_url("https://[64:ff9b::5db8:d70e]/hook").address == "64:ff9b::5db8:d70e"
    assert embedded_ipv4(ipaddress.ip_address("2002:5db8:d70e::1")) == ipaddress.ip_address("93.184.215.14")
    assert embedded_ipv4(ipaddress.ip_address("::1")) is None and embedded_ipv4(ipaddress.ip_address("::")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) is None


def test_ipv4_mapped_forms_match_ipv4_allowlist_entries():
    target = check_webhook_url("http://[::ffff:10.20.3.4]:9000/h", ["10.20.0.0/16"])
    assert target.address == "::ffff:a14:304" and target.port == 9000
    with pytest.raises(WebhookRefused, match="private"):
        check_webhook_url("http://[::ffff:10.21.0.1]/h", ["10.20.0.0/16"])


def test_allow_networks_admits_exactly_the_listed_networks():
    loopback = check_webhook_url("http://127.0.0.1:9000/hook", ["127.0.0.1/32"])
    assert loopback.address == "127.0.0.1" and loopback.port == 9000
    dns = FakeResolver({"receiver.svc.cluster.local": ["10.20.3.4"]})
    assert check_webhook_url("http://receiver.svc.cluster.local/h", ["10.20.0.0/16"], dns).address == "10.20.3.4"
    with pytest.raises(WebhookRefused):  # the allowlist is not a blanket pass
        check_webhook_url("http://127.0.0.2/hook", ["127.0.0.1/32"])
    with pytest.raises(WebhookRefused, match="cloud metadata"):
        check_webhook_url("http://169.254.169.254/", ["10.0.0.0/8"])


def test_address_kind_is_none_only_for_public_addresses():
    assert address_kind(ipaddress.ip_address("93.184.215.14")) is None
    assert address_kind(ipaddress.ip_address("2606:4700::1111")) is None
    assert address_kind(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
