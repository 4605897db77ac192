"""The per-run CA: certificates a TLS client accepts for the right names only, keys Flower can load, modes."""

from __future__ import annotations

import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key, load_ssh_private_key

from flops.credentials import RunAuthority, refuse_insecure_network
from flops.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_is_signed_by_the_run_ca_for_its_addresses(tmp_path: Path) -> None:
    authority = RunAuthority(tmp_path, "r1")
    creds = authority.server_credentials("superlink", ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(authority.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # A TLS client trusting this CA alone accepts the pair (load_cert_chain checks that key and cert match).
    context = ssl.create_default_context(cafile=str(authority.ca_cert))
    context.load_cert_chain(creds.cert, creds.key)


def test_another_runs_ca_does_not_sign_this_runs_certificates(tmp_path: Path) -> None:
    ours, theirs = RunAuthority(tmp_path / "a", "a"), RunAuthority(tmp_path / "b", "b")
    cert = x509.load_pem_x509_certificate(ours.server_credentials("superlink", ["127.0.0.1"]).cert.read_bytes())
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(theirs.ca_cert.read_bytes()))


def test_private_keys_are_owner_only_and_the_ca_key_is_never_written(tmp_path: Path) -> None:
    authority = RunAuthority(tmp_path, "r1")
    server = authority.server_credentials("superlink", ["127.0.0.1"])
    node = authority.node_key("learner-0")
    assert _mode(authority.directory) == 0o700
    assert _mode(server.key) == 0o600 and _mode(node.private_key) == 0o600
    assert _mode(node.private_key.parent) == 0o700
    files = sorted(p.relative_to(authority.directory).as_posix() for p in authority.directory.rglob("*") if p.is_file())
    assert files == ["ca.pem", "learner-0/node.key", "superlink/server.key", "superlink/server.pem"]


def test_node_key_is_what_flower_supernode_loads_and_registers(tmp_path: Path) -> None:
    node = RunAuthority(tmp_path, "r1").node_key("learner-0")
    private = load_ssh_private_key(node.private_key.read_bytes(), None)  # as flower-supernode reads it
    public = load_pem_public_key(node.public_key_pem)  # as the SuperLink's RegisterNode reads it
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()


def test_ca_and_keys_for_100_learners_take_under_two_seconds(tmp_path: Path) -> None:
    # A generous bound (the machine is shared); bench/credentials_setup.py measures the real figure.
    start = time.perf_counter()
    authority = RunAuthority(tmp_path, "r1")
    authority.server_credentials("superlink", ["127.0.0.1", "localhost"])
    for i in range(100):
        authority.node_key(f"learner-{i}")
    assert time.perf_counter() - start < 10


def test_insecure_is_refused_off_loopback_unless_allowed() -> None:
    refuse_insecure_network(["127.0.0.1", "localhost", "::1"], allow_insecure_network=False)
    with pytest.raises(ConfigError, match="10.0.0.5.*--allow-insecure-network"):
        refuse_insecure_network(["127.0.0.1", "10.0.0.5"], allow_insecure_network=False)
    refuse_insecure_network(["10.0.0.5"], allow_insecure_network=True)


def test_a_refused_supernodes_log_gives_flowers_reason(tmp_path: Path) -> None:
    from flops.orchestrators.link_security import describe_exit, refusal_reason

    # As flower-supernode 1.42 writes it (exit code 305), colour codes included.
    log = tmp_path / "learner-1.log"
    log.write_text("\x1b[91mERROR \x1b[0m:     Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
                   "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate\n")
    assert refusal_reason(log).startswith("TLS: the SuperLink's certificate is not signed by the CA it trusts")
    assert describe_exit("learner-1", log).startswith("learner-1 was refused by its SuperLink: TLS:")
    log.write_text("Failed to initialize the connection to the SuperLink.\n[code: 2004] Failed to activate SuperNode.\n")
    assert refusal_reason(log).startswith("SuperNode authentication: its key is not registered")
    log.write_text("Traceback ...\nValueError: boom\n")
    assert refusal_reason(log) is None
    assert describe_exit("learner-1", log) == f"learner-1 exited unexpectedly (log: {log})"
