"""Per-run credentials: a CA, a TLS certificate per SuperLink and an authentication key pair per SuperNode."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flops.errors import ConfigError

CREDENTIALS_DIR = "credentials"
CA_FILE = "ca.pem"
# Long enough for any run, short enough that a leaked certificate of a finished run soon stops mattering.
VALIDITY = datetime.timedelta(days=7)
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCredentials:
    """What a SuperLink needs for TLS: its certificate, its private key and the run's CA."""

    cert: Path
    key: Path
    ca_cert: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair: the private key file (OpenSSH, 0600) and the public key (PEM)."""

    private_key: Path
    public_key_pem: bytes


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, from the first byte on (no chmod window)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def _host_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class RunAuthority:
    """A certificate authority made for one run. Its private key lives in memory only: once the run's
    certificates are issued nobody, not even a copy of the run folder, can issue another one."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.directory = run_dir / CREDENTIALS_DIR
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"FLOps run {run_id} CA")])
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before, self._not_after = now - datetime.timedelta(minutes=5), now + VALIDITY
        self._cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_cert = self.directory / CA_FILE
        self.ca_cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(self._not_before).not_valid_after(self._not_after))

    def server_credentials(self, component: str, hosts: list[str]) -> ServerCredentials:
        """A TLS server certificate for COMPONENT, valid for every address and name in HOSTS."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else component)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_host_entry(h) for h in dict.fromkeys(hosts)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        folder = self.directory / component
        cert_path, key_path = folder / "server.pem", folder / "server.key"
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ServerCredentials(cert=cert_path, key=key_path, ca_cert=self.ca_cert)

    def node_key(self, component: str) -> NodeKey:
        """A SuperNode key pair in the form Flower reads: OpenSSH private key on P-256 (Flower takes any NIST curve;
        P-256 is several times faster to make than P-384, which counts for fleets of learners)."""
        return new_node_key(self.directory / component / "node.key")


def new_node_key(private_key_path: Path) -> NodeKey:
    """Generate a SuperNode authentication key pair; the private key goes to PRIVATE_KEY_PATH (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(private_key_path, key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()))
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return NodeKey(private_key=private_key_path, public_key_pem=public_pem)


def refuse_insecure_network(hosts: list[str], allow_insecure_network: bool) -> None:
    """--insecure sends models and code in plain text: acceptable on loopback, refused elsewhere unless the
    operator says so with --allow-insecure-network."""
    exposed = [h for h in hosts if not _is_loopback(h)]
    if exposed and not allow_insecure_network:
        raise ConfigError(f"--insecure: Flower links would be plain text on {', '.join(exposed)} (not loopback); "
                          "drop --insecure, or add --allow-insecure-network")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
