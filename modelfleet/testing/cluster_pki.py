"""Certificates and the kubeconfig for a throwaway test control plane.

Everything is made with the ``openssl`` command-line tool (present on every Linux machine the
project runs on), so the package needs no cryptography dependency. The set is the minimum a
secure-port API server with RBAC needs:

* a CA (EC P-256), which also signs the cluster's CSRs in the controller-manager;
* the API server's serving certificate, with the SANs clients and in-cluster pods use
  (127.0.0.1, 10.96.0.1, localhost, kubernetes, kubernetes.default, kubernetes.default.svc);
* one admin client certificate, ``CN=admin, O=system:masters``, shared by kubectl, helm, the
  controller-manager, the scheduler and kwok (a test cluster has no need for per-component RBAC);
* an RSA key pair that signs and verifies service-account tokens.

Keys are EC because generating one is much cheaper than an RSA key, and every key is made on
each cold start; only the service-account key is RSA, the algorithm every Kubernetes client
library accepts.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Subject alternative names of the API server's serving certificate.
APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)

_VALID_DAYS = "3650"


class PkiError(RuntimeError):
    """openssl failed; the message holds its command line and stderr."""


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`make_pki` wrote (all PEM)."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise PkiError(
            f"openssl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
        cwd=path.parent,
    )  # fmt: skip


def _leaf(pki_dir: Path, name: str, subject: str, extensions: list[str]) -> tuple[Path, Path]:
    """Key + certificate signed by the CA in ``pki_dir``, with the given X.509v3 extensions."""
    key, cert, csr = pki_dir / f"{name}.key", pki_dir / f"{name}.crt", pki_dir / f"{name}.csr"
    ext = pki_dir / f"{name}.ext"
    ext.write_text("\n".join(extensions) + "\n")
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki_dir)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", _VALID_DAYS, "-sha256", "-extfile", str(ext), "-out", str(cert),
        cwd=pki_dir,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return cert, key


def make_pki(pki_dir: Path) -> Pki:
    """Create the CA, serving, client and service-account keys under ``pki_dir``."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    _ec_key(pki_dir / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=modelfleet-test-ca",
        "-days", _VALID_DAYS, "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        "-out", "ca.crt",
        cwd=pki_dir,
    )  # fmt: skip
    leaf_common = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
    apiserver_cert, apiserver_key = _leaf(
        pki_dir,
        "apiserver",
        "/CN=kube-apiserver",
        [
            *leaf_common,
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(APISERVER_SANS),
        ],
    )
    admin_cert, admin_key = _leaf(
        pki_dir,
        "admin",
        "/O=system:masters/CN=admin",
        [*leaf_common, "extendedKeyUsage=clientAuth"],
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki_dir)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
    return Pki(
        ca_cert=pki_dir / "ca.crt",
        ca_key=pki_dir / "ca.key",
        apiserver_cert=apiserver_cert,
        apiserver_key=apiserver_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        sa_key=pki_dir / "sa.key",
        sa_pub=pki_dir / "sa.pub",
    )


def write_kubeconfig(path: Path, server: str, pki: Pki, context: str = "modelfleet-test") -> None:
    """A kubeconfig for the admin user; paths are absolute so it works from any directory."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": server,
                    "certificate-authority": str(pki.ca_cert.resolve()),
                },
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert.resolve()),
                    "client-key": str(pki.admin_key.resolve()),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "admin"}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
