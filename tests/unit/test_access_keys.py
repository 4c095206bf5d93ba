"""`fnsession access-key create`'s pure parts: key ids, the Secret it writes, and names it refuses
before any API call."""

from __future__ import annotations

import re

import pytest

from fnsession import access_keys


def test_key_ids_are_fc_shaped_and_differ() -> None:
    ids = {access_keys.new_key_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"FNS[A-Z0-9]{17}", i) for i in ids)


def test_the_secret_maps_the_key_to_its_identity_and_the_gateway_finds_it_by_label() -> None:
    s = access_keys.key_secret("FNSABC", "s3cret", "team-a", "ci")
    assert s["metadata"] == {"name": "fnsession-ak-fnsabc", "labels": {access_keys.LABEL: "FNSABC", "app.kubernetes.io/part-of": "fnsession"}}
    assert s["stringData"] == {"accessKeyId": "FNSABC", "accessKeySecret": "s3cret", "namespace": "team-a", "serviceAccount": "ci"}
    assert (s["kind"], s["type"]) == ("Secret", "Opaque")


@pytest.mark.parametrize(("namespace", "account", "says"), [
    ("Team_A", "ci", "--namespace 'Team_A' is not a Kubernetes name"),
    ("team-a", "x" * 64, "--service-account 'xxxx"),
    ("team-a", "", "--service-account '' is not a Kubernetes name"),
])
def test_bad_names_are_refused_naming_the_flag_before_any_api_call(namespace: str, account: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        access_keys.create(namespace, account, "fnsession-system")  # no cluster needed: refused first
