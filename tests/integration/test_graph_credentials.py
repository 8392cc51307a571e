"""devstack's Graph credential writes as rotation uses them (issue 20): add/removePassword and add/removeKey on
both address forms, addKey's proof of possession, who may write, Entra's propagation delay and failing writes.
Callers get tokens from ManagedIdentityCredential; MSAL shows whether a credential gets a token; every effect is
read back through devstack's test view (GET /_devstack/applications/{name})."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.graph import PROOF_AUDIENCE, possession_proof
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

APP = "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11"  # default.yaml: dvbridge-sync, owned by the function app
APP_OID = "0b1ec700-0000-4000-8000-0000000000a1"  # fixed here (default.yaml leaves it random)
OTHER = "0b1ec700-0000-4000-8000-0000000000b2"  # added here: an app nobody owns
OTHER_OID = "0b1ec700-0000-4000-8000-0000000000b3"
FUNCTION_APP_OID = "2c8e4a6b-3f1d-4d7b-8a9c-5e1f3b7d9a22"  # default.yaml: Read.All + ReadWrite.OwnedBy
READER = "c0ffee00-0000-4000-8000-0000000000d1"  # added here: Application.Read.All only
Pair = tuple[rsa.RSAPrivateKey, x509.Certificate]  # a certificate and its private key
NO_PASSWORD = serialization.NoEncryption()
ROUTES = {"appId": f"applications(appId='{APP}')", "object id": f"applications/{APP_OID}"}


def scenario(directory: Path) -> Path:
    world = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    world["entra"]["credential_propagation_s"] = 0  # test 2 sets it through the control endpoint
    world["applications"][0]["object_id"] = APP_OID
    world["applications"][0]["key_credentials"].append({"display_name": "lapsed", "start": "-400d", "end": "-1d"})
    world["vault"]["certificates"].append({"name": "lapsed-cert", "from": {"app": "dvbridge-sync", "key": "lapsed"}})
    world["applications"].append({"name": "other-app", "app_id": OTHER, "object_id": OTHER_OID,
                                  "password_credentials": [{"display_name": "theirs"}]})  # fmt: skip
    world["managed_identities"].append({"name": "reader", "type": "user", "client_id": READER,
                                        "graph_app_roles": ["Application.Read.All"]})  # fmt: skip
    path = directory / "graph-credentials.yaml"
    path.write_text(yaml.safe_dump(world, sort_keys=False))
    return path


class Graph:
    """Graph calls with requests and tokens from ManagedIdentityCredential; devstack's test view."""

    def __init__(self, stack: DevstackProcess) -> None:
        from azure.identity import ManagedIdentityCredential

        self.url, self.ca = stack.env["GRAPH_URL"], stack.env["REQUESTS_CA_BUNDLE"]
        self._credentials = {None: ManagedIdentityCredential(), READER: ManagedIdentityCredential(client_id=READER)}

    def token(self, client_id: str | None = None) -> str:
        return str(self._credentials[client_id].get_token(f"{self.url}/.default").token)

    def post(self, ref: str, action: str, body: dict[str, Any], token: str | None = "") -> requests.Response:
        token = self.token() if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{self.url}/v1.0/{ref}/{action}", json=body, headers=headers, verify=self.ca,
                             timeout=10)  # fmt: skip

    def get(self, ref: str, client_id: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(client_id)}"}
        return requests.get(f"{self.url}/v1.0/{ref}", headers=headers, verify=self.ca, timeout=10)

    def view(self, name: str = "dvbridge-sync") -> dict[str, Any]:
        answer = requests.get(f"{self.url}/_devstack/applications/{name}", verify=self.ca, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def add_password(self, name: str) -> dict[str, Any]:
        answer = self.post(ROUTES["appId"], "addPassword", {"passwordCredential": {"displayName": name}})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    tmp = tmp_path_factory.mktemp("graphcreds")
    process = DevstackProcess(scenario(tmp), tmp / "state", "graph-credentials", "--no-azurite", "--memory")
    with pytest.MonkeyPatch.context() as env:  # what App Service sets for ManagedIdentityCredential
        for key in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE"):
            env.setenv(key, process.env[key])
        env.delenv("AZURE_CLIENT_ID", raising=False)
        yield process
    process.stop()


@pytest.fixture(scope="module")
def graph(stack: DevstackProcess) -> Graph:
    return Graph(stack)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def vault_certificate(stack: DevstackProcess, name: str) -> Pair:
    """A certificate of dvbridge-sync with its key, read from Key Vault with the function app's identity (as
    the app reads the one it signs its proofs with)."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    vault = SecretClient(stack.env["KEY_VAULT_URL"], ManagedIdentityCredential(), verify_challenge_resource=False)
    pem = str(vault.get_secret(name).value).encode()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, x509.load_pem_x509_certificate(pem)


@pytest.fixture(scope="module")
def signer(stack: DevstackProcess) -> Pair:
    return vault_certificate(stack, "dataverse-cert")  # registered and valid


def new_certificate(name: str) -> Pair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=90)).sign(key, hashes.SHA256()))  # fmt: skip
    return key, cert


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NO_PASSWORD).decode()


def sha1(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is defined as SHA-1


def proof(key: rsa.RSAPrivateKey, cert: x509.Certificate, **claims: Any) -> str:
    """A proof built by hand (PyJWT), for the refusals: claims override Graph's documented ones."""
    import base64

    now = int(time.time())
    body = {"aud": PROOF_AUDIENCE, "iss": APP_OID, "nbf": now, "exp": now + 600, **claims}
    x5t = base64.urlsafe_b64encode(sha1(cert)).decode().rstrip("=")
    return jwt.encode(body, pem(key), algorithm="RS256", headers={"x5t": x5t})


def client_token(stack: DevstackProcess, credential: str | dict[str, str]) -> dict[str, Any]:
    """What MSAL gets from Entra for dvbridge-sync with this secret (or certificate)."""
    session = requests.Session()
    session.verify = stack.env["REQUESTS_CA_BUNDLE"]
    app = msal.ConfidentialClientApplication(
        APP, authority=f"{stack.env['ENTRA_AUTHORITY_HOST']}/{stack.env['DATAVERSE_TENANT_ID']}",
        client_credential=credential, instance_discovery=False, http_client=session,
    )  # fmt: skip
    return dict(app.acquire_token_for_client([f"{stack.env['DATAVERSE_URL']}/.default"]))


def key_document(cert: x509.Certificate, name: str) -> dict[str, Any]:
    import base64

    der = cert.public_bytes(serialization.Encoding.DER)
    return {"type": "AsymmetricX509Cert", "usage": "Verify", "displayName": name, "key": base64.b64encode(der).decode()}


def graph_code(answer: requests.Response) -> tuple[int, str]:
    return answer.status_code, str(answer.json()["error"]["code"])


# -- 1. addPassword --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_add_password_answers_the_documented_password_credential(graph: Graph, route: str) -> None:
    end = (datetime.now(UTC) + timedelta(days=45)).replace(microsecond=0)
    body = {"passwordCredential": {"displayName": f"rotated-{route}", "endDateTime": f"{end:%Y-%m-%dT%H:%M:%SZ}"}}
    answer = graph.post(ROUTES[route], "addPassword", body)
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert set(created) - {"@odata.context"} == {"customKeyIdentifier", "displayName", "endDateTime", "hint",
                                                 "keyId", "secretText", "startDateTime"}  # fmt: skip
    secret = created["secretText"]
    assert 16 <= len(secret) <= 64
    wanted = (secret[:3], f"rotated-{route}", f"{end:%Y-%m-%dT%H:%M:%SZ}")  # hint: the first three characters
    assert (created["hint"], created["displayName"], created["endDateTime"]) == wanted
    assert abs((when(created["startDateTime"]) - datetime.now(UTC)).total_seconds()) < 60
    uuid.UUID(created["keyId"])

    (stored,) = [p for p in graph.view()["passwords"] if p["key_id"] == created["keyId"]]
    assert stored["value_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert (stored["display_name"], stored["end"], stored["hint"]) == (f"rotated-{route}", created["endDateTime"],
                                                                       secret[:3])  # fmt: skip
    listed = graph.get(ROUTES["object id"]).json()["passwordCredentials"]
    assert {p["keyId"]: p["secretText"] for p in listed}[created["keyId"]] is None  # shown once, never again


# -- 2. propagation ----------------------------------------------------------------------------------------------


def test_a_new_secret_or_key_gets_no_token_before_the_propagation_delay_and_one_after(
    graph: Graph, stack: DevstackProcess, signer: Pair
) -> None:
    new_key, new_cert = new_certificate("dvbridge-sync-propagating")
    upload = {"keyCredential": key_document(new_cert, "propagating"),
              "proof": possession_proof(APP_OID, pem(signer[0]), sha1(signer[1]), time.time())}  # fmt: skip
    stack.control("entra", {"credential_propagation_s": 2})
    try:
        created = graph.add_password("propagating")
        uploaded = graph.post(ROUTES["appId"], "addKey", upload)
    finally:
        stack.control("entra", {"credential_propagation_s": 0})
    assert uploaded.status_code == 200, uploaded.text
    view = graph.view()
    (stored,) = [p for p in view["passwords"] if p["key_id"] == created["keyId"]]
    (stored_key,) = [k for k in view["keys"] if k["key_id"] == uploaded.json()["keyId"]]
    accepted = when(stored["accepted_after"])
    assert 1 <= (accepted - when(stored["start"])).total_seconds() <= 3
    assert stored_key["accepted_after"] is not None

    with_cert = {"private_key": pem(new_key), "thumbprint": sha1(new_cert).hex()}
    early = client_token(stack, created["secretText"])
    assert (early.get("error"), early.get("error_codes")) == ("invalid_client", [7000215])
    assert client_token(stack, with_cert).get("error_codes") == [700027]  # the key is not known yet
    time.sleep(max(0.0, accepted.timestamp() - time.time()) + 1.1)  # the view's time is whole seconds
    assert "access_token" in client_token(stack, created["secretText"])
    assert "access_token" in client_token(stack, with_cert)


# -- 3. removePassword -------------------------------------------------------------------------------------------


def test_remove_password_deletes_it_and_entra_refuses_the_secret(graph: Graph, stack: DevstackProcess) -> None:
    created = graph.add_password("to-remove")
    assert "access_token" in client_token(stack, created["secretText"])  # propagation is 0 here

    answer = graph.post(ROUTES["object id"], "removePassword", {"keyId": created["keyId"]})
    assert (answer.status_code, answer.content) == (204, b"")
    assert created["keyId"] not in {p["key_id"] for p in graph.view()["passwords"]}
    refused = client_token(stack, created["secretText"])
    assert refused.get("error_codes") == [7000215], refused.get("error")


def test_removing_an_unknown_key_id_is_refused_and_changes_nothing(graph: Graph) -> None:
    before = graph.view()["passwords"]
    answer = graph.post(ROUTES["appId"], "removePassword", {"keyId": str(uuid.uuid4())})
    assert graph_code(answer) == (404, "Request_ResourceNotFound")  # devstack's choice: UNCONFIRMED
    assert graph.view()["passwords"] == before


# -- 4. addKey / removeKey and the proof of possession ---------------------------------------------------------


def test_add_key_with_a_proof_adds_the_certificate_and_remove_key_removes_it(
    graph: Graph, stack: DevstackProcess, signer: Pair
) -> None:
    (key, cert), (new_key, new_cert) = signer, new_certificate("dvbridge-sync-next")
    good = possession_proof(APP_OID, pem(key), sha1(cert), time.time())  # as the app builds it
    body = {"keyCredential": key_document(new_cert, "next"), "passwordCredential": None, "proof": good}
    answer = graph.post(ROUTES["appId"], "addKey", body)
    assert answer.status_code == 200, answer.text
    key_id = answer.json()["keyId"]
    thumbprint = sha1(new_cert).hex().upper()
    (stored,) = [k for k in graph.view()["keys"] if k["key_id"] == key_id]
    assert (stored["thumbprint"], stored["has_private_key"]) == (thumbprint, False)
    with_cert = {"private_key": pem(new_key), "thumbprint": sha1(new_cert).hex()}
    assert "access_token" in client_token(stack, with_cert)  # Entra accepts the uploaded certificate

    refused = graph.post(ROUTES["object id"], "removeKey", {"keyId": key_id, "proof": proof(key, cert, aud=APP)})
    assert graph_code(refused) == (400, "Request_BadRequest")
    assert key_id in {k["key_id"] for k in graph.view()["keys"]}
    fresh = possession_proof(APP_OID, pem(key), sha1(cert), time.time())
    removed = graph.post(ROUTES["object id"], "removeKey", {"keyId": key_id, "proof": fresh})
    assert (removed.status_code, removed.content) == (204, b"")
    assert thumbprint not in {k["thumbprint"] for k in graph.view()["keys"]}
    assert client_token(stack, with_cert).get("error_codes") == [700027]


def bad_proof(case: str, signer: Pair, other: Pair, stack: DevstackProcess) -> str:
    now = int(time.time())
    return {
        "wrong aud": lambda: proof(*signer, aud="00000003-0000-0000-c000-000000000000"),  # Graph's, not AAD Graph's
        "iss is the appId": lambda: proof(*signer, iss=APP),
        "longer than 10 min": lambda: proof(*signer, exp=now + 1200),
        "expired": lambda: proof(*signer, nbf=now - 1200, exp=now - 600),
        "unregistered key": lambda: proof(*other),
        "forged signature": lambda: proof(other[0], signer[1]),  # names the registered certificate
        "expired certificate": lambda: proof(*vault_certificate(stack, "lapsed-cert")),  # registered, lapsed
    }[case]()


@pytest.mark.parametrize("case", ["wrong aud", "iss is the appId", "longer than 10 min", "expired",
                                  "unregistered key", "forged signature", "expired certificate"])  # fmt: skip
def test_add_key_with_a_bad_proof_is_refused_and_adds_nothing(
    graph: Graph, stack: DevstackProcess, signer: Pair, case: str
) -> None:
    other = new_certificate("not-registered")
    before = graph.view()["keys"]
    body = {"keyCredential": key_document(other[1], "sneaky"), "proof": bad_proof(case, signer, other, stack)}
    answer = graph.post(ROUTES["appId"], "addKey", body)
    assert graph_code(answer) == (400, "Request_BadRequest")  # the code is UNCONFIRMED
    assert graph.view()["keys"] == before


# -- 5. who may write --------------------------------------------------------------------------------------------


def test_owned_by_cannot_write_an_app_it_does_not_own(graph: Graph) -> None:
    before = graph.view("other-app")
    assert (graph.view()["owners"], before["owners"]) == ([FUNCTION_APP_OID], [])
    owners = graph.get(f"{ROUTES['object id']}/owners").json()["value"]
    assert [o["id"] for o in owners] == [FUNCTION_APP_OID]
    assert graph.get(f"applications(appId='{OTHER}')").status_code == 200  # Read.All still reads it
    added = graph.post(f"applications(appId='{OTHER}')", "addPassword", {"passwordCredential": {"displayName": "x"}})
    assert graph_code(added) == (403, "Authorization_RequestDenied")
    theirs = before["passwords"][0]["key_id"]
    removed = graph.post(f"applications/{OTHER_OID}", "removePassword", {"keyId": theirs})
    assert graph_code(removed) == (403, "Authorization_RequestDenied")
    assert graph.view("other-app") == before


def test_read_all_alone_cannot_write_and_no_token_is_401(graph: Graph) -> None:
    before = graph.view()
    assert graph.get(ROUTES["appId"], client_id=READER).status_code == 200
    body = {"passwordCredential": {"displayName": "reader"}}
    assert graph_code(graph.post(ROUTES["appId"], "addPassword", body, token=graph.token(READER))) == (
        403, "Authorization_RequestDenied")  # fmt: skip
    assert graph_code(graph.post(ROUTES["object id"], "addPassword", body, token=None)) == (
        401, "InvalidAuthenticationToken")  # fmt: skip
    assert graph.view() == before


# -- 6. failing writes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_fail_graph_writes_fails_the_next_n_writes_with_retry_after(
    graph: Graph, stack: DevstackProcess, status: int
) -> None:
    before = graph.view()["passwords"]
    stack.control("entra", {"fail_graph_writes": {"count": 2, "status": status, "retry_after_s": 7}})
    try:
        body = {"passwordCredential": {"displayName": "during-outage"}}
        first = graph.post(ROUTES["appId"], "addPassword", body)
        assert graph.get(ROUTES["appId"]).status_code == 200  # reads are not failed, nor counted
        second = graph.post(ROUTES["object id"], "addPassword", body)
        for failed in (first, second):
            assert failed.status_code == status
            assert failed.headers["Retry-After"] == "7"
            assert "error" in failed.json()
        assert graph.view()["passwords"] == before  # nothing was written
        third = graph.post(ROUTES["appId"], "addPassword", body)
        assert third.status_code == 200, third.text
    finally:
        stack.control("entra", {"fail_graph_writes": {"count": 0}})
    assert [p["key_id"] for p in graph.view()["passwords"]] == [p["key_id"] for p in before] + [third.json()["keyId"]]
