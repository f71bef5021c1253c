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
    YEAR = "year", "Generalize a date to its year"
    NULL = "null", "Replace with NULL"
    PASS = "pass", "Show unmasked"


class PhiColumn(models.Model):
    datasource = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="phi_columns")
    schema_name = models.CharField(max_length=63, default="public")
    table_name = models.CharField(max_length=63)
    column_name = models.CharField(max_length=63)
    phi_type = models.CharField(max_length=20, choices=PhiType.choices)
    mask = models.CharField(max_length=10, choices=Mask.choices, default=Mask.REDACT)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "schema_name", "table_name", "column_name"], name="phi_column_unique"
            ),
            models.CheckConstraint(condition=Q(phi_type__in=[c.value for c in PhiType]), name="phi_type_known"),
            models.CheckConstraint(condition=Q(mask__in=[c.value for c in Mask]), name="phi_mask_known"),
        ]

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name}.{self.column_name} ({self.phi_type}, {self.mask})"
