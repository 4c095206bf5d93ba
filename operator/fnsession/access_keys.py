"""FC access keys for the gateway: each is a Secret in the gateway's namespace that maps a key id to
its secret and to the Kubernetes identity (a ServiceAccount, in its namespace) the key acts as.
RBAC on that ServiceAccount then decides what the key may do."""

from __future__ import annotations

import re
import secrets
import string

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fnsession.api.rules import DNS_LABEL_PATTERN

LABEL = "fnsession.dev/access-key-id"
DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


def new_key_id() -> str:
    return "FNS" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(17))


def create(namespace: str, service_account: str, keys_namespace: str) -> tuple[str, str]:
    """Mint a key for ``service_account`` in ``namespace``; returns (id, secret)."""
    for what, value in (("--namespace", namespace), ("--service-account", service_account)):
        if len(value) > 63 or not DNS_LABEL.match(value):
            raise ValueError(f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits, '-')")
    config.load_kube_config()
    core = client.CoreV1Api()
    try:
        core.read_namespaced_service_account(service_account, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ValueError(f"ServiceAccount {namespace}/{service_account} does not exist; create it first "
                             f"(kubectl -n {namespace} create serviceaccount {service_account})") from None
        raise
    key_id, secret = new_key_id(), secrets.token_urlsafe(30)
    core.create_namespaced_secret(keys_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=f"fnsession-ak-{key_id.lower()}", labels={
            LABEL: key_id, "app.kubernetes.io/part-of": "fnsession"}),
        type="Opaque",
        string_data={"accessKeyId": key_id, "accessKeySecret": secret, "namespace": namespace,
                     "serviceAccount": service_account}))
    return key_id, secret
