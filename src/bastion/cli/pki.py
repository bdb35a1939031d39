"""``bastion pki issue|revoke|crl|verify``: operate the fleet CA from the command line.

The CA is either ``--keyset DIR`` (its ``fleet-ca``) or ``--ca-key URI --ca-cert PEM``.
``issue`` makes a device certificate (``--device-id``) or a TLS server certificate
(``--dns``/``--ip``) from a CSR; ``revoke`` records a serial in a JSON state file;
``crl`` signs the CRL for that state (bumping its CRL number); ``verify`` validates a
certificate chain, optionally against CRLs.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from cryptography.hazmat.primitives import serialization

from bastion.cli._common import (
    about_file,
    add_json_flag,
    add_passphrase_flag,
    emit,
    passphrase_source,
)
from bastion.errors import BastionError, ConfigError, NotFoundError, VerificationError
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import CERT_CHAIN_MAX_DEPTH, CERT_MAX_SIZE, JSON_MAX_SIZE
from bastion.trust import pki
from bastion.trust.keys import open_signer
from bastion.trust.keyset import KeySet

PEM = serialization.Encoding.PEM


def _ca(args: argparse.Namespace) -> pki.CertificateAuthority:
    if args.keyset:
        return KeySet.load(
            args.keyset, passphrase=passphrase_source(args, args.keyset)
        ).certificate_authority(args.ca_role)
    if not (args.ca_key and args.ca_cert):
        raise ConfigError("give --keyset DIR, or both --ca-key URI and --ca-cert PEM")
    cert = pki.load_certificates(read_bounded(args.ca_cert, CERT_MAX_SIZE, "CA certificate"))[0]
    return pki.CertificateAuthority(
        open_signer(args.ca_key, passphrase=passphrase_source(args, args.ca_key)), cert
    )


def _add_ca(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keyset", metavar="DIR", help="use the key set's CA (default role fleet-ca)")
    p.add_argument("--ca-role", default="fleet-ca", choices=["fleet-ca", "fleet-root-ca"])
    p.add_argument("--ca-key", metavar="URI", help="CA private key URI")
    p.add_argument("--ca-cert", metavar="PEM", help="CA certificate")
    add_passphrase_flag(p)


def _issue(args: argparse.Namespace) -> int:
    ca = _ca(args)
    csr_bytes = read_bounded(args.csr, CERT_MAX_SIZE, "CSR")
    validity = dt.timedelta(days=args.days)
    if args.device_id:
        if args.dns or args.ip:
            raise ConfigError("--device-id and --dns/--ip are exclusive")
        cert = pki.issue_device_certificate(
            ca, csr_bytes, args.device_id, validity, dns_domain=args.dns_domain
        )
        kind = f"device {args.device_id}"
    elif args.dns or args.ip:
        csr = pki.load_csr(csr_bytes)
        public = pki.check_issuable(csr.public_key(), "server")
        cert = pki.issue_server_certificate(ca, public, args.dns or [], args.ip or [], validity)
        kind = "server " + ",".join([*(args.dns or []), *(args.ip or [])])
    else:
        raise ConfigError("give --device-id ID (device certificate) or --dns/--ip (server)")
    atomic_write(args.output, cert.public_bytes(PEM))
    emit(
        args,
        f"issued {kind} certificate serial {cert.serial_number:x} -> {args.output}",
        {
            "output": args.output,
            "serial": f"{cert.serial_number:x}",
            "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(),
        },
    )
    return 0


def _state(path: str) -> pki.RevocationState:
    try:
        return pki.RevocationState.parse(read_bounded(path, JSON_MAX_SIZE, "revocation state"))
    except NotFoundError:
        return pki.RevocationState()


def _revoke(args: argparse.Namespace) -> int:
    if args.cert:
        cert = pki.load_certificates(read_bounded(args.cert, CERT_MAX_SIZE, "certificate"))[0]
        serial = cert.serial_number
    elif args.serial:
        try:
            serial = int(args.serial, 16)
        except ValueError as exc:
            raise ConfigError(f"--serial {args.serial!r}: expected hexadecimal") from exc
    else:
        raise ConfigError("give --serial HEX or --cert PEM")
    state = _state(args.state).revoke(serial, dt.datetime.now(dt.UTC), args.reason)
    atomic_write(args.state, state.to_bytes())
    emit(
        args,
        f"revoked serial {serial:x} in {args.state} ({len(state.revoked)} revoked); "
        "run `bastion pki crl` to publish",
        {"serial": f"{serial:x}", "revoked": len(state.revoked), "state": args.state},
    )
    return 0


def _crl(args: argparse.Namespace) -> int:
    ca = _ca(args)
    state = _state(args.state)
    number = state.crl_number + 1
    crl = pki.build_crl(
        ca, state.revoked, crl_number=number, next_update=dt.timedelta(days=args.days)
    )
    atomic_write(args.output, crl.public_bytes(PEM))
    atomic_write(args.state, pki.RevocationState(number, state.revoked).to_bytes())
    emit(
        args,
        f"CRL #{number} with {len(state.revoked)} revoked serial(s), next update "
        f"{crl.next_update_utc} -> {args.output}",
        {"output": args.output, "crl_number": number, "revoked": len(state.revoked)},
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    def certs(path: str) -> list[Any]:
        return pki.load_certificates(
            read_bounded(path, CERT_MAX_SIZE * CERT_CHAIN_MAX_DEPTH, "certificate"), what=path
        )

    roots = [c for p in args.root for c in certs(p)]
    untrusted = [c for p in args.untrusted or [] for c in certs(p)]
    crls = (
        [pki.load_crl(read_bounded(p, JSON_MAX_SIZE, "CRL")) for p in args.crl]
        if args.crl
        else None
    )
    if len(args.cert) == 1:  # one certificate: its error is the command's error line
        try:
            chain = pki.verify_chain(
                certs(args.cert[0])[0],
                roots=roots,
                intermediates=untrusted,
                usage=args.usage,
                server_name=args.server_name,
                crls=crls,
            )
        except BastionError as exc:
            named = about_file(exc, args.cert[0])
            if named is exc:
                raise
            raise named from exc
        subjects = [c.subject.rfc4514_string() for c in chain.chain]
        emit(
            args,
            f"OK: {args.cert[0]} ({args.usage}) chain: " + " <- ".join(subjects),
            {"ok": True, "chain": subjects, "usage": args.usage, "crl_checked": crls is not None},
        )
        return 0
    results: list[dict[str, Any]] = []
    for path in args.cert:  # several, like `openssl verify a.pem b.pem`: one line each
        try:
            pki.verify_chain(
                certs(path)[0],
                roots=roots,
                intermediates=untrusted,
                usage=args.usage,
                server_name=args.server_name,
                crls=crls,
            )
            results.append({"cert": path, "ok": True})
        except BastionError as exc:
            results.append({"cert": path, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    failed = [r for r in results if not r["ok"]]
    lines = [f"{r['cert']}: OK" if r["ok"] else f"{r['cert']}: {r['error']}" for r in results]
    if failed and args.json:  # one JSON document: main's error object names each failure
        raise VerificationError(
            f"{len(failed)} of {len(results)} certificates do not verify: "
            + "; ".join(f"{r['cert']}: {r['error']}" for r in failed)
        )
    emit(args, "\n".join(lines), {"results": results, "usage": args.usage})
    if failed:
        raise VerificationError(f"{len(failed)} of {len(results)} certificates do not verify")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``pki`` group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pki", help="operate the fleet certificate authority"
    )
    sub = parser.add_subparsers(dest="pki_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    p = sub.add_parser("issue", help="issue a device or server certificate from a CSR")
    _add_ca(p)
    p.add_argument("--csr", required=True, metavar="CSR")
    p.add_argument("--device-id", metavar="ID")
    p.add_argument("--dns-domain", metavar="DOMAIN", help="device SAN DNS name <id>.<DOMAIN>")
    p.add_argument("--dns", action="append", metavar="NAME", help="server DNS name (repeat)")
    p.add_argument("--ip", action="append", metavar="ADDR", help="server IP address (repeat)")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("-o", "--output", required=True, metavar="CERT.pem")
    add_json_flag(p)
    p.set_defaults(func=_issue)

    p = sub.add_parser("revoke", help="record a revoked serial in the CA's state file")
    p.add_argument("--state", required=True, metavar="STATE.json")
    p.add_argument("--serial", metavar="HEX")
    p.add_argument("--cert", metavar="PEM")
    p.add_argument("--reason", metavar="REASON", help="e.g. key_compromise, superseded")
    add_json_flag(p)
    p.set_defaults(func=_revoke)

    p = sub.add_parser("crl", help="sign and write the CRL for the state file")
    _add_ca(p)
    p.add_argument("--state", required=True, metavar="STATE.json")
    p.add_argument("--days", type=int, default=7, help="next update in N days")
    p.add_argument("-o", "--output", required=True, metavar="CRL.pem")
    add_json_flag(p)
    p.set_defaults(func=_crl)

    p = sub.add_parser("verify", help="validate a certificate chain (and revocation)")
    p.add_argument("--root", required=True, action="append", metavar="PEM")
    p.add_argument("--untrusted", action="append", metavar="PEM")
    p.add_argument("--crl", action="append", metavar="CRL")
    p.add_argument("--usage", default="client", choices=["client", "server"])
    p.add_argument("--server-name", metavar="NAME")
    p.add_argument("cert", metavar="CERT", nargs="+")
    add_json_flag(p)
    p.set_defaults(func=_verify)
