"""Profiles, favourites and settings on the atServer, under the desktop app's keys.

Official (``npt_flutter``): ``util/uuid.dart`` makes ``AtKey.self('<uuid>.profiles',
namespace: 'noports')`` holding ``jsonEncode(profile.toJson())`` (the export fields plus
``uuid``); ``profile_repository.dart`` lists them with ``getAtKeys(regex: '.profiles.noports')``;
``favorite_repository.dart`` keeps one self key ``favorites.noports``, a JSON map
uuid -> ``{"uuid": ..., "type": "profile"}``; ``settings_repository.dart`` keeps
``settings.noports``. Self keys are encrypted with the atSign's self-encryption key, which
:meth:`AtClient.put` does for a key shared with nobody.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from ..at.client import AtClient
from ..errors import KeyNotFoundError
from .model import DocumentError, Profile

log = logging.getLogger("noports.profiles")
NAMESPACE = "noports"
PROFILES_SUB = "profiles"
FAVORITES_KEY = f"favorites.{NAMESPACE}"
SETTINGS_KEY = f"settings.{NAMESPACE}"
DEFAULT_SETTINGS: dict[str, Any] = {
    "relayAtsign": "@rv_am",
    "overrideRelay": False,
    "viewLayout": "minimal",
    "darkMode": False,
    "language": "en",
}


def profile_key(uuid: str) -> str:
    return f"{uuid}.{PROFILES_SUB}.{NAMESPACE}"


class ProfileStore:
    """One atSign's profiles. Reads go to the atServer every time (no stale cache)."""

    def __init__(self, client: AtClient) -> None:
        self.client = client
        self.atsign = client.atsign
        self.errors: list[str] = []  # profiles that could not be read at the last list()

    async def uuids(self) -> list[str]:
        suffix = f".{PROFILES_SUB}.{NAMESPACE}{self.atsign}"
        keys = await self.client.scan(re.escape(f".{PROFILES_SUB}.{NAMESPACE}"))
        out = []
        for k in keys:
            if ":" in k or not k.endswith(suffix):  # shared, public or cached keys are not ours
                continue
            out.append(k[: -len(suffix)])
        return out

    async def list(self) -> list[Profile]:
        self.errors = []
        out = []
        for uid in await self.uuids():
            try:
                p = await self.get(uid)
            except (DocumentError, KeyNotFoundError, ValueError) as exc:
                self.errors.append(f"{uid}: {exc}")
                log.warning("profile %s cannot be read: %s", uid, exc)
                continue
            out.append(p)
        out.sort(key=lambda p: p.displayName.lower())
        return out

    async def get(self, uuid: str) -> Profile:
        text = await self.client.get(profile_key(uuid))
        try:
            obj = json.loads(text)
        except ValueError:
            raise DocumentError("stored profile is not JSON") from None
        return Profile.from_json(obj, uuid=uuid)

    async def put(self, profile: Profile) -> Profile:
        await self.client.put(profile_key(profile.uuid), json.dumps(profile.to_json()))
        return profile

    async def delete(self, uuid: str) -> None:
        await self.client.delete(profile_key(uuid))
        favs = await self.favourites()
        if uuid in favs:
            await self.set_favourite(uuid, False)

    async def _favourite_map(self) -> dict[str, Any]:
        try:
            text = await self.client.get(FAVORITES_KEY)
        except KeyNotFoundError:
            return {}
        try:
            got = json.loads(text)
        except ValueError:
            log.warning("%s is not JSON; treating as empty", FAVORITES_KEY)
            return {}
        return got if isinstance(got, dict) else {}

    async def favourites(self) -> set[str]:
        m = await self._favourite_map()
        return {
            str(v.get("uuid") or k)
            for k, v in m.items()
            if isinstance(v, dict) and v.get("type", "profile") == "profile"
        }

    async def set_favourite(self, uuid: str, on: bool) -> None:
        m = await self._favourite_map()
        if on:
            m[uuid] = {"uuid": uuid, "type": "profile"}
        else:
            m.pop(uuid, None)
        await self.client.put(FAVORITES_KEY, json.dumps(m))

    async def settings(self) -> dict[str, Any]:
        try:
            got = json.loads(await self.client.get(SETTINGS_KEY))
        except (KeyNotFoundError, ValueError):
            got = {}
        out = dict(DEFAULT_SETTINGS)
        if isinstance(got, dict):
            out.update(got)
        if not out.get("relayAtsign"):
            out["relayAtsign"] = DEFAULT_SETTINGS["relayAtsign"]
        return out

    async def put_settings(self, settings: dict[str, Any]) -> None:
        await self.client.put(SETTINGS_KEY, json.dumps(settings))
