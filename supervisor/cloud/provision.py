"""Provisioning (spec §10.2, cloud-api.md §1): register, exchange the key, record it in config.json.

Crash safety: the device's identity (``uuid``, ``deviceApiKey``) is in config.json before the
first request (``Config.initialise``), and registration sends that key as ``api_key``. So a
supervisor killed at any point either finds no device in the cloud (registers again) or gets 409
and finds its device with its own key (``GET /v7/device`` as the device): exactly one device. The
result (``registered_at``, ``deviceId``, ``apiKey`` removed) is ONE atomic config.json write.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from typing import Any

from ..config import Config
from .client import ApiClient, CloudRequestError

log = logging.getLogger(__name__)


class ProvisionError(RuntimeError):
    """Provisioning cannot go on (message says why); retried after ``bootstrapRetryDelay``."""


class ExchangeKeyError(ProvisionError):
    """Neither key finds the device, or the device key could not be created."""


def needs_provisioning(config: Config) -> bool:
    """§10.2: ``!provisioned || apiKey != null`` (pinning is handled after provisioning)."""
    return not config.provisioned or config.json.get("apiKey") is not None


def _fetch_device(client: ApiClient, uuid: str, key: str) -> dict[str, Any] | None:
    response = client.request(
        "GET", "/v7/device", key=key, params={"$select": "id", "$filter": f"uuid eq '{uuid}'"}
    )
    try:
        rows = response.json()["d"]
    except (ValueError, KeyError, TypeError):
        raise CloudRequestError("The balena API answered with an unexpected body") from None
    return rows[0] if rows else None


def exchange_key(client: ApiClient, config: Config, provisioning_key: str | None) -> int:
    """``exchangeKeyAndGetDevice``: the device id, making sure the device key works."""
    uuid, device_key = config.uuid, config.json.get("deviceApiKey")
    if device_key:
        try:
            device = _fetch_device(client, uuid, device_key)
        except CloudRequestError as exc:
            if exc.status is None or exc.status >= 500:
                raise  # the cloud is away: no reason to think the key is bad
            device = None
        if device is not None:
            return int(device["id"])
    if not provisioning_key:
        raise ExchangeKeyError("Couldn't fetch device with provisioning key")
    try:
        device = _fetch_device(client, uuid, provisioning_key)
    except CloudRequestError as exc:
        if exc.status is None or exc.status >= 500:
            raise
        device = None
    if device is None:
        raise ExchangeKeyError("Couldn't fetch device with provisioning key")
    try:
        client.request(
            "POST",
            f"/api-key/device/{int(device['id'])}/device-key",
            key=provisioning_key,
            json={"apiKey": device_key},
        )
    except CloudRequestError as exc:
        if exc.status is None or exc.status >= 500:
            raise
        raise ExchangeKeyError("Couldn't register device key with provisioning key") from None
    return int(device["id"])


def _exchange_or_regenerate(client: ApiClient, config: Config, provisioning_key: str | None) -> int:
    try:
        return exchange_key(client, config, provisioning_key)
    except ExchangeKeyError:
        log.warning("Exchanging key failed, re-registering...")
        config.json.set(uuid=uuidlib.uuid4().hex, deviceApiKey=uuidlib.uuid4().hex)
        raise


def register(client: ApiClient, config: Config, provisioning_key: str, facts: dict[str, Any]) -> int | None:
    """``POST /device/register``; the new device id, or None for 409 (already registered)."""
    body = {
        "application": config.json.get("applicationId"),
        "uuid": config.uuid,
        "device_type": facts.get("device_type"),
        "api_key": config.json.get("deviceApiKey"),
        **{
            k: facts[k]
            for k in ("supervisor_version", "os_version", "os_variant", "mac_address")
            if facts.get(k)
        },
    }
    try:
        response = client.request("POST", "/device/register", key=provisioning_key, json=body, ok=(201,))
    except CloudRequestError as exc:
        if exc.status == 409:
            return None
        raise
    try:
        return int(response.json()["id"])
    except (ValueError, KeyError, TypeError):
        raise CloudRequestError("The balena API answered the registration with an unexpected body") from None


def provision(client: ApiClient, config: Config, facts: dict[str, Any]) -> None:
    """One attempt (§10.2 cases); raises on failure, the caller retries after the bootstrap delay."""
    provisioning_key = config.json.get("apiKey")
    registered_at = config.json.get("registered_at")
    device_id = config.json.get("deviceId")
    if registered_at is not None and device_id is not None and provisioning_key is None:
        return
    if registered_at is None:
        missing = [
            what
            for what, value in (
                ("a provisioning api key", provisioning_key),
                ("an application id", config.json.get("applicationId")),
                ("a uuid", config.uuid),
            )
            if not value
        ]
        if missing:
            raise ProvisionError(f"Cannot provision without {missing[0]}")
        log.info("Registering the device with the balena API")
        device_id = register(client, config, provisioning_key, facts)
        if device_id is None:
            log.info("Device is already registered, exchanging the key")
            device_id = _exchange_or_regenerate(client, config, provisioning_key)
        registered_at = int(time.time() * 1000)
    elif device_id is None:
        device_id = _exchange_or_regenerate(client, config, provisioning_key)
    else:
        device_id = exchange_key(client, config, provisioning_key)
    config.json.set(registered_at=registered_at, deviceId=device_id, apiKey=None)
    log.info("Device provisioned (device id %d)", device_id)
