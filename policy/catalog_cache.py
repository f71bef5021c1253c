"""Per-process cache of target catalog snapshots, refreshed after a short time-to-live.

A snapshot joins the target's own catalog (relations, functions) with the PHI tags from the control plane; both
change rarely, so a short TTL keeps policy changes prompt without a catalog round trip per statement.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable

import psycopg

from phigate import envconfig
from policy.credentials import Access
from policy.defaults import DEFAULT_INFERENCE, DEFAULT_MASKS
from policy.models import (
    ClassifiedRelation,
    DataSource,
    InferenceRule,
    MaskRule,
    PatientKeyColumn,
    PhiColumn,
    PhiType,
)
from policy.target_catalog import PatientKey, Tag, TargetCatalog, load_target_catalog

CATALOG_TTL_SECONDS = envconfig.get_int("CATALOG_TTL_SECONDS", 30, minimum=0)
REFRESH_FLOOR_SECONDS = 0.25  # a new table is visible to masking within this; bounds reload storms


def tags_for(datasource: str) -> list[Tag]:
    return [
        Tag(c.schema_name, c.table_name, c.column_name, c.phi_type)
        for c in PhiColumn.objects.filter(datasource__name=datasource)
    ]


def patient_keys_for(datasource: str) -> list[PatientKey]:
    """The data source's patient-key columns (policy.patient_keys: the accounting of disclosures)."""
    return [
        PatientKey(c.schema_name, c.table_name, c.column_name, c.key_name)
        for c in PatientKeyColumn.objects.for_datasource(datasource)
    ]


def classified_for(datasource: str) -> frozenset[tuple[str, str]]:
    """(schema, table) of the relations the policy has classified (policy.classification)."""
    return ClassifiedRelation.objects.for_datasource(datasource).names()


def inference_for(datasource: str) -> dict[tuple[str, str], str]:
    """Every (type, identity kind) cell: explicit rules over the per-kind defaults."""
    cells = {(str(t), str(k)): str(a) for t in PhiType for k, a in DEFAULT_INFERENCE.items()}
    for rule in InferenceRule.objects.filter(datasource__name=datasource):
        cells[(rule.phi_type, rule.identity_kind)] = rule.action
    return cells


def masks_for(datasource: str) -> dict[tuple[str, str], str]:
    """Every (type, identity kind) cell: the data source's explicit rules over the defaults."""
    masks = {(str(t), str(k)): str(m) for t, row in DEFAULT_MASKS.items() for k, m in row.items()}
    for rule in MaskRule.objects.filter(datasource__name=datasource):
        masks[(rule.phi_type, rule.identity_kind)] = rule.mask
    return masks


class CatalogCache:
    def __init__(self, access: Access, ttl_seconds: float | None = None) -> None:
        self.access = access
        self.ttl = CATALOG_TTL_SECONDS if ttl_seconds is None else ttl_seconds
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, TargetCatalog]] = {}

    def get(self, datasource: str, url: str, must_know: Iterable[str] = ()) -> TargetCatalog:
        """The snapshot; reloaded after the TTL, or sooner when it lacks a relation a statement names
        (a table created a moment ago), at most once per REFRESH_FLOOR_SECONDS."""
        now = time.monotonic()
        entry = self._entries.get(datasource)
        if entry is not None and self._fresh_enough(entry, now, must_know):
            return entry[1]
        with self._lock:
            entry = self._entries.get(datasource)
            if entry is not None and self._fresh_enough(entry, now, must_know):
                return entry[1]
            # Stamped with the time the load *started*, and the control plane read before the target: the executor
            # commits a statement's inherited tags (and markers) before the statement, then, for a relation that
            # existed before, waits one TTL before committing (approvals.tags_follow_data). So a snapshot that
            # shows the new rows either has their tags or has expired by then.
            started = time.monotonic()
            classified = classified_for(datasource)
            tags = tags_for(datasource)
            patient_keys = patient_keys_for(datasource)
            with psycopg.connect(
                url, autocommit=True, application_name=f"phigate-catalog-{self.access.lower()}"
            ) as conn:
                catalog = load_target_catalog(conn, tags, patient_keys)
            active = DataSource.objects.filter(name=datasource, is_active=True).exists()
            catalog = dataclasses.replace(
                catalog,
                datasource_active=active,
                masks=masks_for(datasource),
                inference=inference_for(datasource),
                classified_relations=classified,
            )
            self._entries[datasource] = (started, catalog)
            return catalog

    def _fresh_enough(self, entry: tuple[float, TargetCatalog], now: float, must_know: Iterable[str]) -> bool:
        age = now - entry[0]
        if age >= self.ttl:
            return False
        if age < REFRESH_FLOOR_SECONDS:
            return True
        return all(entry[1].relation_oid(name) is not None for name in must_know)

    def peek(self, datasource: str) -> TargetCatalog | None:
        """The current snapshot if it is within its TTL, without ever loading (safe on an event loop)."""
        entry = self._entries.get(datasource)
        if entry is None or time.monotonic() - entry[0] >= self.ttl:
            return None
        return entry[1]
