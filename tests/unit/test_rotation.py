"""The rotation state machine against in-memory Graph, Key Vault, Entra and Table Storage: every step, every
resume after a crash, every failure undone (issue 20)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.expiry.notify import Channel
from shared.expiry.rotation import RotationSettings, Rotator
from shared.expiry.rotation_state import RotationStore
from shared.identity.credential import DataverseCredential, certificate_credential
from shared.identity.secret_store import SecretValue
from tests.fakes.expiry import AlertSink
from tests.fakes.http import FakeHttp
from tests.fakes.keyvault import FakeSecretStore
from tests.fakes.rotation import (
    APP_ID,
    Clock,
    Crash,
    FakeApp,
    FakeCheck,
    FakeLeases,
    FakeVersions,
    Key,
    certificate,
    refused,
)
from tests.fakes.tables import FakeTableClient

NAME = "dataverse-client-secret"
CERT = "dataverse-cert"
GRACE_S = 1800
OLD_VALUE = "oldSecretValue~0123456789abcdefghijklmn"
STEPS = ["planned", "added", "stored", "verified", "switched", "retired"]


class World:
    def __init__(self, *, days_left: float = 25, kind: str = "secret", propagation_s: float = 0, **overrides: Any):
        self.clock = Clock()
        self.app = FakeApp(self.clock)
        self.vault = FakeVersions()
        self.check = FakeCheck(self.app, self.clock, timedelta(seconds=propagation_s))
        self.table = FakeTableClient("credentialrotation")
        self.states = RotationStore(self.table)
        self.leases = FakeLeases()
        self.switched: list[str] = []
        self.sleeps: list[float] = []
        http, store = FakeHttp(), FakeSecretStore()
        self.sink = AlertSink(http, store, [Channel("json", "json", "alerts-url")])
        self.notifier = self.sink.notifier(store)
        end = self.clock.now + timedelta(days=days_left)
        if kind == "secret":
            self.old = self.app.add_existing_password(OLD_VALUE, end)
            self.old_version = self.vault.put(NAME, OLD_VALUE, expires_on=end, tags={"entraKeyId": self.old.key_id})
        else:
            pem, cert = certificate("dvbridge", self.clock.now - timedelta(days=300), 365)
            self.old_key = Key("old-key-id", cert, self.clock.now - timedelta(days=300))
            self.app.keys.append(self.old_key)
            self.old_version = self.vault.put(CERT, pem, content_type="application/x-pem-file")
        settings = dict(enabled=True, client_id=APP_ID, credential_name=NAME if kind == "secret" else CERT,
                        kind=kind, rotate_before_days=30, lifetime_days=180, grace_s=GRACE_S,
                        verify_deadline_s=600, retry_after_s=3600) | overrides  # fmt: skip
        self.rotator = self.build(RotationSettings(**settings))  # type: ignore[arg-type]

    def build(self, settings: RotationSettings) -> Rotator:
        def parse(secret: SecretValue) -> DataverseCredential:
            if settings.kind == "certificate":
                return certificate_credential(secret)
            return DataverseCredential(kind="secret", source=secret.name, secret=secret.value)

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock.sleep(seconds)

        return Rotator(settings, states=self.states, entra=self.app, vault=self.vault, check=self.check,
                       notices=self.notifier, lease=self.leases, switch=self.switched.append, parse=parse,
                       clock=self.clock, sleep=sleep)  # fmt: skip

    def tick(self, **kwargs: Any) -> Any:
        return self.rotator.tick(**kwargs)

    def after_grace(self) -> Any:
        self.clock.sleep(GRACE_S + 1)
        return self.tick()

    def steps(self) -> list[str]:
        return [a["level"] for a in self.sink.received["json"]]

    def latest(self) -> Any:
        return self.vault.objects[self.rotator.settings.credential_name][-1]


def test_a_secret_25_days_from_expiry_is_rotated_step_by_step() -> None:
    world = World(days_left=25)
    first = world.tick()
    assert first.outcome == "waiting"
    assert first.state.phase == "switched"
    assert world.steps() == STEPS[:-1]
    new = [p for p in world.app.passwords if p.key_id != world.old.key_id]
    assert len(new) == 1
    assert new[0].end.date() == (world.clock.now + timedelta(days=180)).date()
    latest = world.latest()
    assert latest.value == new[0].value
    assert latest.expires_on == new[0].end
    assert latest.tags == {"entraKeyId": new[0].key_id, "rotationId": first.state.rotation_id}
    assert latest.content_type == "text/plain"
    assert world.switched == [NAME]
    assert world.old in world.app.passwords, "the old password outlives the switch: the grace period"

    assert world.tick().outcome == "waiting"  # still within the grace
    done = world.after_grace()
    assert done.outcome == "retired"
    assert [p.key_id for p in world.app.passwords] == [new[0].key_id]
    assert world.old_version.enabled is False
    assert latest.enabled is True
    assert world.steps() == STEPS, "one notice per step"
    assert world.tick().outcome == "not due", "the new secret has 180 days"


def test_a_secret_outside_the_window_is_left_alone_unless_an_admin_asks() -> None:
    world = World(days_left=45)
    assert world.tick().outcome == "not due"
    assert world.app.calls == ["application"]
    assert world.steps() == []
    assert world.tick(reason="admin", force=True).state.phase == "switched"


def test_the_secret_reaches_key_vault_only_once_entra_accepts_it() -> None:
    world = World(propagation_s=20)
    stored_while_refused = []
    original = world.check.token

    def token(credential: DataverseCredential) -> None:
        try:
            original(credential)
        except Exception:
            stored_while_refused.append(len(world.vault.objects[NAME]))
            raise

    world.check.token = token  # type: ignore[method-assign]
    assert world.tick().state.phase == "switched"
    assert stored_while_refused, "Entra refused the new secret at first"
    assert set(stored_while_refused) == {1}, "no version before Entra accepted it"
    assert world.sleeps[:4] == [1.0, 2.0, 4.0, 8.0], "backoff between token attempts"


def test_a_secret_refused_past_the_deadline_is_removed_and_the_old_one_kept() -> None:
    world = World(propagation_s=10_000)
    report = world.tick()
    assert report.outcome == "failed"
    assert report.state.failed_step == "verify"
    assert [p.key_id for p in world.app.passwords] == [world.old.key_id], "the new password was removed"
    assert world.vault.objects[NAME] == [world.old_version], "Key Vault never saw it"
    failed = world.sink.received["json"][-1]
    assert failed["level"] == "failed"
    assert "AADSTS7000215" in failed["title"]
    assert "still refused 600 s after it was added" in failed["text"]
    assert world.tick().outcome == "not due", "ROTATION_RETRY_AFTER_S before the next attempt"
    world.check.propagation = timedelta(0)
    assert world.tick(reason="admin", force=True).state.phase == "switched"


def test_graph_down_at_add_changes_nothing_and_names_the_cause() -> None:
    world = World()
    world.app.fail_next("add_password", refused("serviceNotAvailable", step="graph", retryable=True, status=503))
    report = world.tick()
    assert report.outcome == "failed"
    assert report.state.failed_step == "add"
    assert [p.key_id for p in world.app.passwords] == [world.old.key_id]
    assert len(world.vault.objects[NAME]) == 1
    assert "serviceNotAvailable" in world.sink.received["json"][-1]["title"]
    assert "(HTTP 503)" in world.sink.received["json"][-1]["text"], "the status a person looks up first"


def test_key_vault_down_at_the_store_removes_the_new_password() -> None:
    world = World()
    world.vault.fail_next("store", refused("KeyVaultUnavailable", step="key_vault", retryable=True, status=503))
    report = world.tick()
    assert report.outcome == "failed"
    assert report.state.failed_step == "store"
    assert [p.key_id for p in world.app.passwords] == [world.old.key_id]
    assert len(world.vault.objects[NAME]) == 1
    alert = world.sink.received["json"][-1]
    assert "KeyVaultUnavailable" in alert["title"]
    assert "the new password was removed" in alert["text"]


def test_a_failed_whoami_undoes_the_rotation_in_entra_and_key_vault() -> None:
    world = World()
    world.check.dataverse_failure = refused("0x80072560", step="whoami", status=403)
    report = world.tick()
    assert report.outcome == "failed"
    assert report.state.failed_step == "verify"
    assert [p.key_id for p in world.app.passwords] == [world.old.key_id]
    latest = world.latest()
    assert latest.value == OLD_VALUE
    assert latest.tags["entraKeyId"] == world.old.key_id
    assert [v.enabled for v in world.vault.objects[NAME]] == [True, False, True]
    assert world.switched == []


@pytest.mark.parametrize("crash", ["add_password", "store"])
def test_a_crash_while_the_text_is_only_in_memory_leaves_no_orphan(crash: str) -> None:
    world = World()
    (world.app if crash == "add_password" else world.vault).crash_after(crash)
    with pytest.raises(Crash):
        world.tick()
    world.leases.held.clear()  # the dead worker's lease ran out
    if crash == "add_password":  # the answer was lost: Entra has a password nobody saved the keyId of
        assert world.states.get(NAME).phase == "planned"
        assert len(world.app.passwords) == 2
    resumed = world.tick()
    assert resumed.state.phase == "switched"
    assert world.after_grace().outcome == "retired"
    assert len(world.app.passwords) == 1
    assert world.latest().value == world.app.passwords[0].value, "Key Vault holds the one password Entra has"


def test_a_crash_after_the_new_version_was_written_adopts_it() -> None:
    world = World()
    world.vault.crash_after("store")
    original_store = world.vault.store
    written: list[str] = []

    def store(*args: Any, **kwargs: Any) -> str:
        written.append("store")
        return original_store(*args, **kwargs)

    world.vault.store = store  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.tick()
    world.leases.held.clear()
    assert world.states.get(NAME).phase == "added"
    assert len(world.vault.objects[NAME]) == 2
    # The latest version carries this rotation's id: adopted, not removed (it works; the text is in Key Vault).
    assert world.tick().state.phase == "switched"
    assert written == ["store"], "no second password, no second version"
    assert world.after_grace().outcome == "retired"
    assert len(world.app.passwords) == 1
    assert world.latest().value == world.app.passwords[0].value


@pytest.mark.parametrize("step", ["planned", "added", "stored", "verified", "switched"])
def test_a_crash_after_each_saved_step_resumes_to_one_valid_credential(step: str) -> None:
    world = World()
    original = world.states.save

    def save(state: Any) -> Any:
        saved = original(state)
        if state.phase == step and not getattr(world, "crashed", False):
            world.crashed = True  # type: ignore[attr-defined]
            raise Crash(step)
        return saved

    world.states.save = save  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.tick()
    world.leases.held.clear()
    world.tick()
    world.after_grace()
    assert world.states.get(NAME).phase == "retired"
    assert len(world.app.passwords) == 1
    assert world.latest().value == world.app.passwords[0].value
    assert world.latest().enabled
    assert world.check.accepts(DataverseCredential(kind="secret", source=NAME, secret=world.latest().value))


def test_the_old_password_stays_when_graph_cannot_remove_it_and_goes_next_time() -> None:
    world = World()
    world.tick()
    world.app.fail_next("remove_password", refused("serviceNotAvailable", step="graph", retryable=True))
    assert world.after_grace().outcome == "waiting"
    assert world.old in world.app.passwords
    assert world.states.get(NAME).phase == "switched"
    assert world.steps()[-1] == "retire_delayed"
    assert world.tick().outcome == "retired"
    assert world.old not in world.app.passwords


def test_one_rotation_at_a_time() -> None:
    world = World()
    world.leases.held.add(f"rotation-{NAME}")
    assert world.tick().outcome == "busy"
    assert world.app.calls == []
    assert world.steps() == []


def test_a_connection_string_is_not_rotated_and_the_alert_says_how_to_fix_it() -> None:
    world = World()
    world.vault.put(NAME, "AuthType=ClientSecret;Url=https://x.crm.dynamics.com;ClientId=a;ClientSecret=b")
    report = world.tick()
    assert report.outcome == "failed"
    assert "ConnectionStringNotRotated" in report.state.failure
    assert world.app.calls == ["application"]
    assert len(world.app.passwords) == 1
    assert "Value alone" in world.sink.received["json"][-1]["fix"]


def test_disabled_rotation_does_nothing() -> None:
    world = World(enabled=False)
    assert world.tick(force=True).outcome == "disabled"
    assert world.app.calls == []


def test_a_renewed_certificate_is_uploaded_with_a_proof_verified_and_the_old_key_removed() -> None:
    world = World(kind="certificate")
    assert world.tick().outcome == "not due", "nothing renewed yet"
    pem, cert = certificate("dvbridge", world.clock.now, 365)
    renewed = world.vault.put(CERT, pem, content_type="application/x-pem-file")
    report = world.tick(reason="event")
    assert report.state.phase == "switched"
    assert report.state.new_version == renewed.version
    assert [k.certificate for k in world.app.keys] == [world.old_key.certificate, cert]
    assert world.steps() == ["planned", "added", "verified", "switched"]
    assert world.after_grace().outcome == "retired"
    assert [k.certificate for k in world.app.keys] == [cert], "removeKey with a proof from the new certificate"
    assert world.tick().outcome == "not due"


def test_a_certificate_whose_upload_fails_verification_is_removed_again() -> None:
    world = World(kind="certificate")
    pem, _cert = certificate("dvbridge", world.clock.now, 365)
    world.vault.put(CERT, pem, content_type="application/x-pem-file")
    world.check.dataverse_failure = refused("0x80072560", step="whoami", status=403)
    report = world.tick()
    assert report.outcome == "failed"
    assert [k.certificate for k in world.app.keys] == [world.old_key.certificate]
    assert "the new certificate was removed from Entra" in world.sink.received["json"][-1]["text"]


def test_no_secret_reaches_a_notice_or_the_state() -> None:
    world = World()
    world.tick()
    world.after_grace()
    new_value = world.latest().value
    text = repr(world.sink.received) + repr(world.table.rows())
    assert new_value not in text
    assert OLD_VALUE not in text
