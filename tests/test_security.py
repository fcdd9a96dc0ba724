"""Auth roles on every method, TLS and mTLS, erasure, and nothing private in the logs."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audience.client import AudienceClient, Profile, Unavailable
from audience.client._proto import audience_pb2 as pb
from audience.server._auth import hash_token
from conftest import crafted_profiles

TOKENS = {"reader": "r-secret", "writer": "w-secret", "admin": "a-secret"}
RANK = {"reader": 0, "writer": 1, "admin": 2}
NEEDS = {
    "Lookalike": "reader",
    "Segments": "reader",
    "Predictions": "reader",
    "Profiles": "writer",
    "Admin": "admin",
}


def call(channel: grpc.Channel, service, method, token: str | None):
    """Call a method with an empty request; returns the status code."""
    path = f"/{service.full_name}/{method.name}"
    ser, de = (lambda b: b), (lambda b: b)
    md = [("authorization", f"Bearer {token}")] if token else None
    kind = (method.client_streaming, method.server_streaming)
    try:
        if kind == (False, False):
            channel.unary_unary(path, ser, de)(b"", metadata=md, timeout=30)
        elif kind == (False, True):
            list(channel.unary_stream(path, ser, de)(b"", metadata=md, timeout=30))
        elif kind == (True, False):
            channel.stream_unary(path, ser, de)(iter([b""]), metadata=md, timeout=30)
        else:
            list(channel.stream_stream(path, ser, de)(iter([b""]), metadata=md, timeout=30))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_method_checks_the_token_and_role(start_server) -> None:
    server = start_server(tokens=tuple((hash_token(t), r) for r, t in TOKENS.items()))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING  # health stays open
        walked = 0
        for name in ("Profiles", "Lookalike", "Segments", "Predictions", "Admin"):
            service = pb.DESCRIPTOR.services_by_name[name]
            for method in service.methods:
                walked += 1
                where = f"{name}.{method.name}"
                assert call(channel, service, method, None) == grpc.StatusCode.UNAUTHENTICATED
                assert call(channel, service, method, "wrong") == grpc.StatusCode.UNAUTHENTICATED
                for role, token in TOKENS.items():
                    got = call(channel, service, method, token)
                    if RANK[role] < RANK[NEEDS[name]]:
                        assert got == grpc.StatusCode.PERMISSION_DENIED, (where, role)
                    else:
                        assert got not in (
                            grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.PERMISSION_DENIED,
                        ), (where, role, got)
        assert walked == 29  # every method of the five services (jobs, GetEncoder, Publish,
        # DiagnoseSeeds, the predictions and their fits too)
    with AudienceClient(f"127.0.0.1:{server.port}", token=TOKENS["writer"]) as c:
        c.upsert_users(crafted_profiles())
        assert len(c.find_lookalikes(seed_ids=["cook-0"], k=3).users) == 3


def _cert(subject: str, key, issuer=None, issuer_key=None, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pems(tmp: Path) -> dict[str, Path]:
    out = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("audience-test-ca", ca_key, ca=True)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("localhost", key, ca, ca_key)
        out[f"{name}.pem"] = tmp / f"{name}.pem"
        out[f"{name}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}.key"] = tmp / f"{name}.key"
        out[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    out["ca.pem"] = tmp / "ca.pem"
    out["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


def test_tls_and_mtls(start_server, tmp_path: Path) -> None:
    pems = _pems(tmp_path)
    tls = start_server(
        data_dir=tmp_path / "tls",
        host="localhost",
        tls_cert=pems["server.pem"],
        tls_key=pems["server.key"],
    )
    target = f"localhost:{tls.port}"
    with AudienceClient(target, root_certificates=pems["ca.pem"].read_bytes()) as c:
        c.upsert_users(crafted_profiles()[:3])
        assert c.stats().users == 3
    with AudienceClient(target, timeout=3, retries=0) as plain, pytest.raises(Unavailable):
        plain.stats()  # a plaintext client cannot talk to a TLS server

    mtls = start_server(
        data_dir=tmp_path / "mtls",
        host="localhost",
        tls_cert=pems["server.pem"],
        tls_key=pems["server.key"],
        tls_client_ca=pems["ca.pem"],
    )
    target = f"localhost:{mtls.port}"
    with AudienceClient(
        target,
        root_certificates=pems["ca.pem"].read_bytes(),
        certificate_chain=pems["client.pem"].read_bytes(),
        private_key=pems["client.key"].read_bytes(),
    ) as c:
        assert c.stats().users == 0
    with (
        AudienceClient(
            target, root_certificates=pems["ca.pem"].read_bytes(), timeout=3, retries=0
        ) as no_cert,
        pytest.raises(Unavailable),
    ):
        no_cert.stats()  # mTLS: no client certificate, no connection


def _nearest_is(client: AudienceClient, vector: bytes, user_id: str) -> bool:
    """Whether `user_id` is the nearest stored user to `vector` (via a probe user)."""
    client.upsert_users([Profile("probe", vector=vector)])
    hit = client.find_lookalikes(seed_ids=["probe"], k=1).users
    client.delete_users(["probe"])
    return bool(hit) and hit[0].user_id == user_id and hit[0].score > 0.999


def test_erasure_everywhere(start_server, tmp_path: Path) -> None:
    data = tmp_path / "erase"
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        c.upsert_users(crafted_profiles())
        c.snapshot()  # an index generation that still holds the user
        vector = c.get_user("code-2", include_vector=True).vector
        assert _nearest_is(c, vector, "code-2")
        c.delete_users(["code-2"])
        assert not _nearest_is(c, vector, "code-2")
    server.stop()
    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}") as c:
        assert not _nearest_is(c, vector, "code-2")
        c.rebuild_index()
        assert not _nearest_is(c, vector, "code-2")
    again.stop()
    # The newest index generation on disk (written after the delete) does not hold it.
    import faiss

    newest = sorted((data / "index").glob("gen-*.faiss"))[-1]
    index = faiss.read_index(str(newest))
    q = np.frombuffer(vector, "<f4")[None, :]
    scores, _ = index.search(q, 1)
    assert scores[0][0] < 0.999


def test_no_text_or_vector_in_logs(start_server, caplog) -> None:
    canary = "zebra-canary-7731"
    with caplog.at_level(logging.DEBUG):
        server = start_server(segment_min_group_size=1000)
        with AudienceClient(f"127.0.0.1:{server.port}") as c:
            extra = [Profile(f"extra-{i}", texts=["football goal and a match"]) for i in range(5)]
            c.upsert_users(crafted_profiles() + extra + [Profile("u-canary", texts=[canary])])
            c.find_lookalikes(seed_texts=[f"{canary} fans"], k=3)
            vec = c.get_user("u-canary", include_vector=True).vector
            for bad in ([Profile("", texts=[canary])], [Profile("x", texts=[canary * 10_000])]):
                with pytest.raises(Exception):  # noqa: B017 - any typed error will do
                    c.upsert_users(bad)
            c.rebuild_index()
            c.build_segments(reducer="pca", min_cluster_size=3)
            # k-anonymity: every segment is smaller than 1000, so no attribute statistics.
            assert all(s.attribute_profile.get("withheld") for s in c.list_segments())
            c.delete_users(["u-canary"])
        server.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records and canary not in text
    floats = np.frombuffer(vec, "<f4")[:3]
    assert not any(f"{x:.6f}" in text for x in floats)
