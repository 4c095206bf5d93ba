"""Fixtures for tests against a real cluster (see ``cluster.py``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def api() -> client.ApiClient:
    try:
        config.load_kube_config()
        api = client.ApiClient()
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"no cluster at KUBECONFIG ({exc}); start one with `make cluster-up` (or CLUSTER=kind)")
    return api


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (with everything in it)."""
    name = f"fns-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"fnsession.dev/test": "true"})))
    for _ in range(100):  # pods are refused until the namespace's default ServiceAccount exists
        if core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
            break
        time.sleep(0.1)
    yield name
    core.delete_namespace(name, grace_period_seconds=0)
