"""Admin UI for the policy. Every change made here is versioned and audited like an import (policy.document)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from policy.document import export_document, record_change
from policy.models import (
    ApproverRule,
    ClassificationSource,
    ClassifiedRelation,
    DataSource,
    InferenceRule,
    MaskRule,
    PatientKeyColumn,
    PhiColumn,
    PolicyVersion,
)


class AuditedPolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Wraps each save and delete: document before, the change, document after, one audited version bump."""

    def _datasource(self, obj: Any) -> DataSource:
        return obj if isinstance(obj, DataSource) else obj.datasource

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if isinstance(obj, DataSource) and obj.pk is None:
            super().save_model(request, obj, form, change)  # a new data source has no policy to change yet
            return
        with transaction.atomic():
            datasource = DataSource.objects.select_for_update().get(pk=self._datasource(obj).pk)
            before = export_document(datasource)
            super().save_model(request, obj, form, change)
            record_change(datasource, request.user, before, front="web")  # type: ignore[arg-type]

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            datasource = DataSource.objects.select_for_update().get(pk=self._datasource(obj).pk)
            before = export_document(datasource)
            super().delete_model(request, obj)
            record_change(datasource, request.user, before, front="web")  # type: ignore[arg-type]


@admin.register(DataSource)
class DataSourceAdmin(AuditedPolicyAdmin):
    list_display = ["name", "is_active", "policy_version", "approvals_default", "approvals_ddl", "approvals_bulk_write"]
    readonly_fields = ["policy_version"]


@admin.register(PhiColumn)
class PhiColumnAdmin(AuditedPolicyAdmin):
    list_display = ["datasource", "schema_name", "table_name", "column_name", "phi_type"]
    list_filter = ["datasource", "phi_type"]


@admin.register(PatientKeyColumn)
class PatientKeyColumnAdmin(AuditedPolicyAdmin):
    """Columns that identify a patient: the accounting of disclosures records their values, pseudonymised, for
    every result that returns them (policy.patient_keys). Columns with the same kind of key share a key name."""

    list_display = ["datasource", "schema_name", "table_name", "column_name", "key_name"]
    list_filter = ["datasource", "key_name"]


@admin.register(ClassifiedRelation)
class ClassifiedRelationAdmin(AuditedPolicyAdmin):
    """Marking a relation classified says its columns were reviewed: tagged ones hold PHI, the others none.
    Agents may read it from then on (policy.classification)."""

    list_display = ["datasource", "schema_name", "table_name", "how", "classified_by", "classified_at", "ticket_id"]
    list_filter = ["datasource", "how"]
    search_fields = ["schema_name", "table_name"]
    fields = ["datasource", "schema_name", "table_name", "how", "classified_by", "classified_at", "ticket_id"]
    readonly_fields = ["how", "classified_by", "classified_at", "ticket_id"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            obj.how = ClassificationSource.MANUAL
            obj.classified_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(MaskRule)
class MaskRuleAdmin(AuditedPolicyAdmin):
    list_display = ["datasource", "phi_type", "identity_kind", "mask"]
    list_filter = ["datasource", "identity_kind"]


@admin.register(InferenceRule)
class InferenceRuleAdmin(AuditedPolicyAdmin):
    list_display = ["datasource", "phi_type", "identity_kind", "action"]


@admin.register(ApproverRule)
class ApproverRuleAdmin(AuditedPolicyAdmin):
    """The groups are saved after the rule itself (many-to-many): the audited version is taken after both."""

    list_display = ["datasource", "risk", "mode", "count"]
    list_filter = ["datasource"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        self._before = export_document(self._datasource(obj))
        admin.ModelAdmin.save_model(self, request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_related(request, form, formsets, change)
            datasource = DataSource.objects.select_for_update().get(pk=form.instance.datasource_id)
            record_change(datasource, request.user, self._before, front="web")  # type: ignore[arg-type]


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """History is read-only: versions are written only by record_change."""

    list_display = ["datasource", "number", "changed_by", "created_at", "sha256"]
    readonly_fields = ["datasource", "number", "document", "sha256", "changed_by", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
