"""Data sources and the PHI tags on their columns.

A DataSource row holds no credential: the read-only URL lives only in the gateway's environment and the write
URL only in the executor's (policy.credentials), so the control-plane database and the web process never see one.
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

datasource_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,62}$", "Data source names are lower-case letters, digits and '_' (they are database names)."
)


class DataSource(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[datasource_name_validator])
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Approval thresholds (part of the policy document): how many reviewers a held statement needs.
    approvals_default = models.PositiveSmallIntegerField(default=1)
    approvals_ddl = models.PositiveSmallIntegerField(default=2)
    approvals_bulk_write = models.PositiveSmallIntegerField(default=2)  # UPDATE/DELETE without WHERE
    policy_version = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(approvals_default__gte=1, approvals_ddl__gte=1, approvals_bulk_write__gte=1),
                name="datasource_needs_an_approval",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PhiType(models.TextChoices):
    """HIPAA identifiers (45 CFR 164.514(b)(2)) plus free-text clinical notes."""

    NAME = "name", "Name"
    ADDRESS = "address", "Street address"
    ZIP = "zip", "ZIP code"
    BIRTH_DATE = "birth_date", "Date of birth"
    SERVICE_DATE = "service_date", "Date tied to a person"
    PHONE = "phone", "Phone number"
    FAX = "fax", "Fax number"
    EMAIL = "email", "Email address"
    SSN = "ssn", "Social security number"
    MRN = "mrn", "Medical record number"
    HEALTH_PLAN = "health_plan", "Health plan beneficiary number"
    ACCOUNT = "account", "Account number"
    LICENSE = "license", "Certificate or licence number"
    VEHICLE = "vehicle", "Vehicle identifier"
    DEVICE = "device", "Device identifier"
    URL = "url", "Web URL"
    IP = "ip", "IP address"
    BIOMETRIC = "biometric", "Biometric identifier"
    PHOTO = "photo", "Full-face photograph"
    OTHER_ID = "other_id", "Other unique identifier"
    CLINICAL_NOTES = "clinical_notes", "Free-text clinical notes"


class Mask(models.TextChoices):
    REDACT = "redact", "Redact"
    PARTIAL = "partial", "Keep the last four characters"
    HASH = "hash", "Deterministic pseudonym (keyed HMAC)"
    GENERALIZE = "generalize", "Generalize (dates to the year, ZIP codes to three digits)"
    NULL = "null", "Replace with NULL"
    PASS = "pass", "Show unmasked"


class IdentityKind(models.TextChoices):
    """Who is looking: masks and inference rules differ per kind (agents get the strictest defaults)."""

    AGENT = "agent", "AI agent"
    ENGINEER = "engineer", "Human engineer"
    REVIEWER = "reviewer", "Reviewer"


class InferenceAction(models.TextChoices):
    """What happens when a statement filters, sorts, groups or joins on a PHI column (it can leak values)."""

    ALLOW = "allow", "Allow"
    HOLD = "hold", "Hold for approval"
    DENY = "deny", "Deny"


class PhiColumn(models.Model):
    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="phi_columns")
    schema_name = models.CharField(max_length=63, default="public")
    table_name = models.CharField(max_length=63)
    column_name = models.CharField(max_length=63)
    phi_type = models.CharField(max_length=20, choices=PhiType.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "schema_name", "table_name", "column_name"], name="phi_column_unique"
            ),
            models.CheckConstraint(condition=Q(phi_type__in=[c.value for c in PhiType]), name="phi_type_known"),
        ]

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name}.{self.column_name} ({self.phi_type})"


patient_key_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,39}$", "Key names are lower-case letters, digits and '_' (e.g. patient_id, mrn)."
)


class PatientKeyColumnQuerySet(models.QuerySet["PatientKeyColumn"]):
    def for_datasource(self, datasource_name: str) -> PatientKeyColumnQuerySet:
        return self.filter(datasource__name=datasource_name)

    def key_names(self) -> list[str]:
        """The kinds of patient key configured (``patient_id``, ``mrn``), for the accounting page's choices."""
        return sorted(set(self.values_list("key_name", flat=True)))


class PatientKeyColumn(models.Model):
    """A column whose value identifies a patient (``patients.id``, ``patients.mrn``, ``encounters.patient_id``).

    The accounting of disclosures (45 CFR 164.528; policy.patient_keys) records, for every result that returns
    such a column unmodified, which patients' rows were sent, pseudonymised. Columns holding the same kind of
    key share a ``key_name`` (``patients.id`` and ``encounters.patient_id`` are both ``patient_id``), so a
    patient read through either is found by one lookup. Tables with a patient-key column are patient tables: a
    result read from one without a key column is recorded as unidentified, never guessed.
    """

    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="patient_key_columns")
    schema_name = models.CharField(max_length=63, default="public")
    table_name = models.CharField(max_length=63)
    column_name = models.CharField(max_length=63)
    key_name = models.CharField(max_length=40, validators=[patient_key_name_validator])

    objects = PatientKeyColumnQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "schema_name", "table_name", "column_name"], name="patient_key_column_unique"
            ),
            models.CheckConstraint(
                condition=Q(key_name__regex=r"^[a-z][a-z0-9_]{0,39}$"), name="patient_key_name_well_formed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name}.{self.column_name} ({self.key_name})"


class ClassificationSource(models.TextChoices):
    """How a relation came to be classified (kept for the audit trail and the admin list)."""

    MANUAL = "manual", "Classified by a person (admin)"
    POLICY_DOCUMENT = "policy_document", "Listed in an imported policy document"
    LINEAGE = "lineage", "Created by an approved statement whose column lineage is complete"
    SEED = "seed", "Created with its tags by a seed or fixture (demo, tests)"
    EXISTING_TAGS = "existing_tags", "Already had PHI tags when classification markers were introduced"


class ClassifiedRelationQuerySet(models.QuerySet["ClassifiedRelation"]):
    def for_datasource(self, datasource_name: str) -> ClassifiedRelationQuerySet:
        return self.filter(datasource__name=datasource_name)

    def names(self) -> frozenset[tuple[str, str]]:
        """(schema, table) pairs, as stored (PostgreSQL's own spelling)."""
        return frozenset(self.values_list("schema_name", "table_name"))


class ClassifiedRelation(models.Model):
    """A relation the PHI policy has looked at: its columns that hold PHI are tagged, the others hold none.

    Agents may read only classified relations (policy.classification). The marker is positive and explicit
    because a relation without tags is ambiguous: "holds no PHI" and "nobody has looked yet" look the same, and
    a table copied or created outside the gateway is the second case. Tags alone never classify a relation:
    tags that follow data into an existing, unclassified table (INSERT ... SELECT) must not make its other,
    unexamined columns readable.
    """

    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="classified_relations")
    schema_name = models.CharField(max_length=63, default="public")
    table_name = models.CharField(max_length=63)
    how = models.CharField(max_length=20, choices=ClassificationSource.choices)
    classified_by = models.ForeignKey("auth.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    classified_at = models.DateTimeField(auto_now_add=True)
    ticket_id = models.BigIntegerField(null=True, blank=True)  # the approved statement that created it (lineage)

    objects = ClassifiedRelationQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "schema_name", "table_name"], name="classified_relation_unique"
            ),
            models.CheckConstraint(
                condition=Q(how__in=[c.value for c in ClassificationSource]), name="classified_relation_how_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name} ({self.how})"


class MaskRule(models.Model):
    """An explicit mask for one semantic type and one kind of identity; absent rules fall back to defaults."""

    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="mask_rules")
    phi_type = models.CharField(max_length=20, choices=PhiType.choices)
    identity_kind = models.CharField(max_length=10, choices=IdentityKind.choices)
    mask = models.CharField(max_length=10, choices=Mask.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["datasource", "phi_type", "identity_kind"], name="one_mask_per_type_kind"),
            models.CheckConstraint(condition=Q(phi_type__in=[c.value for c in PhiType]), name="maskrule_type_known"),
            models.CheckConstraint(
                condition=Q(identity_kind__in=[c.value for c in IdentityKind]), name="maskrule_kind_known"
            ),
            models.CheckConstraint(condition=Q(mask__in=[c.value for c in Mask]), name="maskrule_mask_known"),
        ]


class InferenceRule(models.Model):
    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="inference_rules")
    phi_type = models.CharField(max_length=20, choices=PhiType.choices)
    identity_kind = models.CharField(max_length=10, choices=IdentityKind.choices)
    action = models.CharField(max_length=5, choices=InferenceAction.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "phi_type", "identity_kind"], name="one_inference_rule_per_type_kind"
            ),
            models.CheckConstraint(
                condition=Q(action__in=[c.value for c in InferenceAction]), name="inference_action_known"
            ),
        ]


class PolicyVersion(models.Model):
    """Every accepted policy document, verbatim, with who changed it: the policy's own history."""

    datasource = models.ForeignKey(DataSource, on_delete=models.PROTECT, related_name="policy_versions")
    number = models.PositiveIntegerField()
    document = models.TextField()
    sha256 = models.CharField(max_length=64)
    changed_by = models.ForeignKey("auth.User", on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["datasource", "number"], name="policy_version_unique"),
        ]


class ApproverMode(models.TextChoices):
    N_OF = "n_of", "N approvals from members of the groups"
    ANY_OF = "any_of", "One approval from a member of any of the groups"
    ALL_OF = "all_of", "One approval from each of the groups (distinct people)"


class RiskScope(models.TextChoices):
    ANY = "any", "Any risk"
    LOW = "low", "Low"
    MODERATE = "moderate", "Moderate"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class ApproverRule(models.Model):
    """Who must approve held statements of a data source at a risk level: "2 of dba", "any of dba or security",
    "all of dba and security". The rule for the ticket's own risk wins over the data source's "any" rule; with
    no rule, any reviewer may approve and the counts come from the data source's thresholds."""

    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="approver_rules")
    risk = models.CharField(max_length=10, choices=RiskScope.choices, default=RiskScope.ANY)
    mode = models.CharField(max_length=10, choices=ApproverMode.choices)
    count = models.PositiveSmallIntegerField(default=1)
    groups = models.ManyToManyField("auth.Group", related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["datasource", "risk"], name="approver_rule_once_per_risk"),
            models.CheckConstraint(condition=Q(count__gte=1), name="approver_rule_needs_an_approval"),
            models.CheckConstraint(
                condition=Q(mode__in=[choice.value for choice in ApproverMode]), name="approver_rule_mode_known"
            ),
            models.CheckConstraint(
                condition=Q(risk__in=[choice.value for choice in RiskScope]), name="approver_rule_risk_known"
            ),
        ]

    def __str__(self) -> str:
        names = " and ".join(sorted(group.name for group in self.groups.all()))
        return f"{self.datasource}: {self.mode} {self.count} of {names} ({self.risk})"

    def approvals_needed(self) -> int:
        if self.mode == ApproverMode.N_OF:
            return self.count
        if self.mode == ApproverMode.ALL_OF:
            return max(1, self.groups.count())
        return 1
