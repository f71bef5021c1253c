"""A synthetic clinic: the target database the demo's agent queries.

Everything here is invented. Identifiers are drawn from ranges reserved for fiction (SSNs starting with 9
are never issued, 555-01xx phone numbers are reserved for fiction, example.com/.org mail domains are
reserved by RFC 2606), so nothing this module produces can match a real person even by accident.

The generator is seeded and uses no clock and no external data, so one seed always yields byte-identical
tables: demos, screenshots and tests can refer to concrete rows. Loading goes through ``COPY ... FROM STDIN``
because 10,000 patients with ~85,000 related rows must load in a few seconds on a laptop.

This module is deliberately free of Django: the orchestrator uses it before any settings exist, and
``seed_demo`` imports ``PHI_TAGS`` from here so that tags and data cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

# --------------------------------------------------------------------------------------------------------------
# Public contract
# --------------------------------------------------------------------------------------------------------------

PHI_TYPES: Final = frozenset(
    {"name", "birth_date", "ssn", "phone", "email", "address", "zip", "mrn", "service_date", "clinical_notes"}
)
"""The semantic types the demo tags use (a subset of policy.models.PhiType); anything else is caught at import.
How each type is masked for each kind of viewer is the policy's business (policy.defaults), not the tag's."""


@dataclass(frozen=True)
class PhiTag:
    """One column that holds PHI, and its semantic type."""

    table: str
    column: str
    phi_type: str

    def __post_init__(self) -> None:
        if self.phi_type not in PHI_TYPES:
            raise ValueError(f"unknown PHI type {self.phi_type!r} for {self.table}.{self.column}")


@dataclass(frozen=True)
class ClinicCounts:
    """How many rows a load produced, so callers can report and tests can assert without re-counting."""

    patients: int
    encounters: int
    prescriptions: int


PHI_TAGS: tuple[PhiTag, ...] = (
    PhiTag("patients", "mrn", "mrn"),
    PhiTag("patients", "full_name", "name"),
    PhiTag("patients", "date_of_birth", "birth_date"),
    PhiTag("patients", "ssn", "ssn"),
    PhiTag("patients", "phone", "phone"),
    PhiTag("patients", "email", "email"),
    PhiTag("patients", "address", "address"),
    PhiTag("patients", "zip", "zip"),
    PhiTag("encounters", "admitted_at", "service_date"),
    PhiTag("encounters", "notes", "clinical_notes"),
)


@dataclass(frozen=True)
class PatientKeyTag:
    """A column that identifies a patient, and its kind of key (policy.models.PatientKeyColumn)."""

    table: str
    column: str
    key_name: str


PATIENT_KEYS: tuple[PatientKeyTag, ...] = (
    PatientKeyTag("patients", "id", "patient_id"),
    PatientKeyTag("patients", "mrn", "mrn"),
    PatientKeyTag("encounters", "patient_id", "patient_id"),
)
"""The clinic's patient keys, for the accounting of disclosures: ``encounters.patient_id`` is the same kind of key
as ``patients.id``, so a patient read through either is found by one look-up."""

CLINIC_TABLES: Final = ("diagnosis_codes", "patients", "encounters", "prescriptions")
"""Every table ``load_clinic`` creates (in ``public``). All are classified by the demo's policy: their PHI columns
are in ``PHI_TAGS`` and their other columns hold none, so agents may read them (policy.classification)."""

DEFAULT_SEED: Final = 20261124

CLINIC_SCHEMA_SQL: Final = """
CREATE TABLE public.diagnosis_codes (
    code text PRIMARY KEY,
    description text NOT NULL
);
CREATE TABLE public.patients (
    id bigint PRIMARY KEY,
    mrn text UNIQUE NOT NULL,
    full_name text NOT NULL,
    date_of_birth date NOT NULL,
    ssn text NOT NULL,
    phone text,
    email text,
    address text,
    zip text
);
CREATE TABLE public.encounters (
    id bigint PRIMARY KEY,
    patient_id bigint REFERENCES public.patients,
    admitted_at timestamptz NOT NULL,
    diagnosis_code text NOT NULL,
    notes text
);
CREATE TABLE public.prescriptions (
    id bigint PRIMARY KEY,
    encounter_id bigint REFERENCES public.encounters,
    drug text NOT NULL,
    dose text NOT NULL
);
CREATE INDEX encounters_patient_id_idx ON public.encounters (patient_id);
CREATE INDEX prescriptions_encounter_id_idx ON public.prescriptions (encounter_id);
"""

# --------------------------------------------------------------------------------------------------------------
# Embedded vocabularies (made up, or common public code lists; no personal data)
# --------------------------------------------------------------------------------------------------------------

# fmt: off

FIRST_NAMES: Final = (
    "Aaliyah", "Aiden", "Amelia", "Andre", "Anika", "Arjun", "Beatriz", "Benjamin", "Camila", "Carlos",
    "Chloe", "Daniel", "Darius", "Elena", "Elijah", "Emma", "Farah", "Gabriel", "Grace", "Hana",
    "Hector", "Imani", "Isaac", "Isabella", "Jamal", "Jane", "Javier", "Julia", "Kai", "Keisha",
    "Leah", "Liam", "Lucia", "Malik", "Maya", "Mei", "Mohammed", "Nadia", "Noah", "Olivia",
    "Omar", "Priya", "Rafael", "Rosa", "Samuel", "Sara", "Sofia", "Tariq", "Thomas", "Uma",
    "Victor", "Wei", "Yara", "Yusuf", "Zoe", "Ethan", "Harper", "Mateo", "Nora", "Oscar",
)

LAST_NAMES: Final = (
    "Abbott", "Adeyemi", "Alvarez", "Anderson", "Bauer", "Bennett", "Brooks", "Castillo", "Chen", "Cohen",
    "Diaz", "Doe", "Dubois", "Edwards", "Fischer", "Flores", "Garcia", "Goldberg", "Gonzalez", "Gupta",
    "Hall", "Hernandez", "Ibrahim", "Ito", "Jackson", "Johansson", "Kim", "Kowalski", "Lee", "Lopez",
    "Martin", "Meyer", "Moreno", "Nakamura", "Nguyen", "Novak", "Okafor", "Olsen", "Patel", "Perez",
    "Petrov", "Quinn", "Ramirez", "Rossi", "Santos", "Schmidt", "Shah", "Silva", "Singh", "Sullivan",
    "Tanaka", "Thompson", "Torres", "Van Dyke", "Walker", "Wang", "Williams", "Yamamoto", "Young", "Zhang",
)

STREET_NAMES: Final = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Birch", "Willow", "Lake", "Hill", "River",
    "Sunset", "Park", "Washington", "Lincoln", "Jefferson", "Madison", "Chestnut", "Walnut", "Spruce", "Meadow",
    "Highland", "Church", "Mill", "Spring", "Forest", "Orchard", "Prairie", "Ridge", "Valley", "Harbor",
)

STREET_SUFFIXES: Final = ("St", "Ave", "Rd", "Ln", "Dr", "Blvd", "Ct", "Way", "Pl", "Ter")

# (city, state, telephone area code, first three digits of the ZIP code)
CITIES: Final = (
    ("Springfield", "IL", "217", "627"),
    ("Riverton", "WY", "307", "825"),
    ("Fairview", "OR", "503", "970"),
    ("Franklin", "TN", "615", "370"),
    ("Greenville", "SC", "864", "296"),
    ("Clinton", "IA", "563", "527"),
    ("Madison", "WI", "608", "537"),
    ("Georgetown", "TX", "512", "786"),
    ("Salem", "MA", "978", "019"),
    ("Bristol", "CT", "860", "060"),
    ("Dayton", "OH", "937", "454"),
    ("Arlington", "VA", "703", "222"),
    ("Burlington", "VT", "802", "054"),
    ("Oxford", "MS", "662", "386"),
    ("Ashland", "KY", "606", "411"),
    ("Milton", "FL", "850", "325"),
    ("Auburn", "AL", "334", "368"),
    ("Lexington", "NE", "308", "688"),
    ("Dover", "DE", "302", "199"),
    ("Hudson", "NY", "518", "125"),
)

MAIL_DOMAINS: Final = ("example.com", "example.org")

# (code, description, typical prescriptions as (drug, dose)); ICD-10-CM-style codes with public descriptions.
DIAGNOSES: Final[tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]] = (
    ("E11.9", "Type 2 diabetes mellitus without complications",
     (("metformin", "500 mg PO BID"), ("metformin", "1000 mg PO BID"), ("glipizide", "5 mg PO daily"))),
    ("E11.65", "Type 2 diabetes mellitus with hyperglycemia",
     (("insulin glargine", "10 units SC nightly"), ("metformin", "1000 mg PO BID"))),
    ("E78.5", "Hyperlipidemia, unspecified",
     (("atorvastatin", "20 mg PO daily"), ("atorvastatin", "40 mg PO daily"), ("rosuvastatin", "10 mg PO daily"))),
    ("E03.9", "Hypothyroidism, unspecified",
     (("levothyroxine", "50 mcg PO daily"), ("levothyroxine", "75 mcg PO daily"))),
    ("E66.9", "Obesity, unspecified", ()),
    ("E55.9", "Vitamin D deficiency, unspecified", (("cholecalciferol", "2000 IU PO daily"),)),
    ("I10", "Essential (primary) hypertension",
     (("lisinopril", "10 mg PO daily"), ("amlodipine", "5 mg PO daily"), ("hydrochlorothiazide", "25 mg PO daily"))),
    ("I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris",
     (("aspirin", "81 mg PO daily"), ("atorvastatin", "80 mg PO daily"))),
    ("I48.91", "Unspecified atrial fibrillation",
     (("apixaban", "5 mg PO BID"), ("metoprolol succinate", "50 mg PO daily"))),
    ("I50.9", "Heart failure, unspecified", (("furosemide", "40 mg PO daily"), ("carvedilol", "6.25 mg PO BID"))),
    ("J45.909", "Unspecified asthma, uncomplicated",
     (("albuterol HFA", "2 puffs q4-6h PRN"), ("fluticasone HFA", "110 mcg 2 puffs BID"))),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified", (("tiotropium", "18 mcg inhaled daily"),)),
    ("J06.9", "Acute upper respiratory infection, unspecified", ()),
    ("J18.9", "Pneumonia, unspecified organism",
     (("amoxicillin-clavulanate", "875 mg PO BID x7d"), ("azithromycin", "500 mg PO day 1 then 250 mg x4d"))),
    ("J02.9", "Acute pharyngitis, unspecified", (("amoxicillin", "500 mg PO BID x10d"),)),
    ("N39.0", "Urinary tract infection, site not specified",
     (("nitrofurantoin", "100 mg PO BID x5d"), ("cephalexin", "500 mg PO BID x7d"))),
    ("N18.9", "Chronic kidney disease, unspecified", ()),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis",
     (("omeprazole", "20 mg PO daily"), ("famotidine", "20 mg PO BID"))),
    ("K58.9", "Irritable bowel syndrome without diarrhea", (("dicyclomine", "20 mg PO QID PRN"),)),
    ("K52.9", "Noninfective gastroenteritis and colitis, unspecified", (("ondansetron", "4 mg PO q8h PRN"),)),
    ("M54.50", "Low back pain, unspecified",
     (("ibuprofen", "600 mg PO q8h PRN"), ("cyclobenzaprine", "5 mg PO nightly PRN"))),
    ("M17.11", "Unilateral primary osteoarthritis, right knee", (("naproxen", "500 mg PO BID PRN"),)),
    ("M81.0", "Age-related osteoporosis without current pathological fracture", (("alendronate", "70 mg PO weekly"),)),
    ("M79.7", "Fibromyalgia", (("duloxetine", "30 mg PO daily"),)),
    ("F32.9", "Major depressive disorder, single episode, unspecified",
     (("sertraline", "50 mg PO daily"), ("escitalopram", "10 mg PO daily"))),
    ("F41.1", "Generalized anxiety disorder", (("buspirone", "10 mg PO BID"), ("sertraline", "25 mg PO daily"))),
    ("F90.0", "Attention-deficit hyperactivity disorder, predominantly inattentive type",
     (("methylphenidate ER", "18 mg PO qAM"),)),
    ("G43.909", "Migraine, unspecified, not intractable, without status migrainosus",
     (("sumatriptan", "50 mg PO PRN"), ("propranolol", "40 mg PO BID"))),
    ("G47.33", "Obstructive sleep apnea (adult) (pediatric)", ()),
    ("R51.9", "Headache, unspecified", (("acetaminophen", "500 mg PO q6h PRN"),)),
    ("R05.9", "Cough, unspecified", (("benzonatate", "100 mg PO TID PRN"),)),
    ("R10.9", "Unspecified abdominal pain", ()),
    ("R07.9", "Chest pain, unspecified", ()),
    ("L40.0", "Psoriasis vulgaris", (("triamcinolone 0.1% cream", "apply BID"),)),
    ("L20.9", "Atopic dermatitis, unspecified", (("hydrocortisone 2.5% cream", "apply BID"),)),
    ("H10.9", "Unspecified conjunctivitis", (("polymyxin B-trimethoprim drops", "1 drop q4h x7d"),)),
    ("H66.90", "Otitis media, unspecified, unspecified ear", (("amoxicillin", "875 mg PO BID x10d"),)),
    ("B34.9", "Viral infection, unspecified", ()),
    ("U07.1", "COVID-19", (("nirmatrelvir-ritonavir", "300/100 mg PO BID x5d"),)),
    ("D64.9", "Anemia, unspecified", (("ferrous sulfate", "325 mg PO daily"),)),
    ("Z00.00", "Encounter for general adult medical examination without abnormal findings", ()),
    ("Z23", "Encounter for immunization", ()),
)

FALLBACK_PRESCRIPTIONS: Final = (
    ("acetaminophen", "500 mg PO q6h PRN"),
    ("ibuprofen", "400 mg PO q6h PRN"),
    ("loratadine", "10 mg PO daily"),
)

OUTCOMES: Final = (
    "reports improved symptoms", "reports no change", "reports worsening at night", "tolerating medication well",
    "reports mild nausea on current regimen", "adherent to plan", "missed several doses", "feels much better",
)

PLANS: Final = (
    "continue current regimen", "recheck labs in 3 months", "titrate dose and follow up in 4 weeks",
    "refer to specialist", "lifestyle counselling provided", "return if symptoms persist", "order imaging",
)
# fmt: on

# Every template names the patient in full and carries at least one ISO date, like real free-text notes do:
# this is what makes ``encounters.notes`` PHI even though it is "just text".
NOTE_TEMPLATES: Final = (
    "Pt {name} (DOB {dob}) seen {date} for follow-up of {code}; {outcome}.",
    "{date}: {name}, DOB {dob}, presented with complaints consistent with {description} ({code}). Plan: {plan}.",
    "Telehealth visit {date} with {name} ({mrn}). Discussed {description}; {outcome}; {plan}.",
    "Admitted {date}. {name}, born {dob}, contact {contact}. Dx {code}. Plan: {plan}.",
    "{name} (DOB {dob}) returns {date} re {description}; {outcome}.",
)

_DOB_FIRST: Final = dt.date(1930, 1, 1)
_DOB_LAST: Final = dt.date(2024, 12, 31)
_VISITS_FIRST: Final = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
_VISITS_LAST: Final = dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------------------------
# Generation (pure: a Random in, rows out)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patient:
    """The fields later rows refer back to (notes quote them), kept so they need not be re-derived."""

    id: int
    mrn: str
    full_name: str
    date_of_birth: dt.date
    ssn: str
    phone: str | None
    email: str | None
    address: str
    zip: str

    def row(self) -> tuple[object, ...]:
        return (
            self.id,
            self.mrn,
            self.full_name,
            self.date_of_birth,
            self.ssn,
            self.phone,
            self.email,
            self.address,
            self.zip,
        )


def _random_date(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randint(0, (last - first).days))


def _fake_ssn(rng: random.Random) -> str:
    """9xx area numbers are never issued, so these cannot collide with a real SSN."""
    return f"9{rng.randint(0, 99):02d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _fake_phone(rng: random.Random, area_code: str) -> str:
    """555-0100..555-0199 is the block reserved for fictional use."""
    return f"{area_code}-555-01{rng.randint(0, 99):02d}"


def _fake_email(rng: random.Random, first: str, last: str) -> str:
    local = f"{first}.{last}".lower().replace(" ", "")
    return f"{local}{rng.randint(1, 999)}@{rng.choice(MAIL_DOMAINS)}"


def _make_patient(rng: random.Random, patient_id: int, mrn_number: int) -> _Patient:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    city, state, area_code, zip_prefix = rng.choice(CITIES)
    zip_code = f"{zip_prefix}{rng.randint(1, 99):02d}"
    street = f"{rng.randint(1, 9999)} {rng.choice(STREET_NAMES)} {rng.choice(STREET_SUFFIXES)}"
    # A few missing contact details, as in any real registry; drawn unconditionally to keep the stream stable.
    has_phone, has_email = rng.random() >= 0.04, rng.random() >= 0.08
    phone, email = _fake_phone(rng, area_code), _fake_email(rng, first, last)
    return _Patient(
        id=patient_id,
        mrn=f"MRN{mrn_number:08d}",
        full_name=f"{first} {last}",
        date_of_birth=_random_date(rng, _DOB_FIRST, _DOB_LAST),
        ssn=_fake_ssn(rng),
        phone=phone if has_phone else None,
        email=email if has_email else None,
        address=f"{street}, {city}, {state} {zip_code}",
        zip=zip_code,
    )


def generate_patients(rng: random.Random, count: int) -> list[_Patient]:
    """Patients with unique 8-digit MRNs (sampled without replacement, so uniqueness needs no retries)."""
    mrn_numbers = rng.sample(range(10_000_000, 100_000_000), count)
    return [_make_patient(rng, index + 1, mrn_numbers[index]) for index in range(count)]


def _admission_time(rng: random.Random, dob: dt.date) -> dt.datetime:
    born = dt.datetime(dob.year, dob.month, dob.day, tzinfo=dt.UTC)
    first = max(_VISITS_FIRST, born)
    span = int((_VISITS_LAST - first).total_seconds())
    return first + dt.timedelta(seconds=rng.randint(0, span))


def _note(rng: random.Random, patient: _Patient, admitted: dt.datetime, code: str, description: str) -> str:
    template = rng.choice(NOTE_TEMPLATES)
    return template.format(
        name=patient.full_name,
        dob=patient.date_of_birth.isoformat(),
        date=admitted.date().isoformat(),
        code=code,
        description=description,
        mrn=patient.mrn,
        contact=patient.phone or patient.email or "none on file",
        outcome=rng.choice(OUTCOMES),
        plan=rng.choice(PLANS),
    )


def generate_visits(
    rng: random.Random, patients: Sequence[_Patient]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Encounters (1-5 per patient, mean 3) and their prescriptions (0-3 each, mean 1.5), in id order."""
    encounters: list[tuple[object, ...]] = []
    prescriptions: list[tuple[object, ...]] = []
    for patient in patients:
        for _ in range(rng.randint(1, 5)):
            code, description, typical = rng.choice(DIAGNOSES)
            admitted = _admission_time(rng, patient.date_of_birth)
            encounter_id = len(encounters) + 1
            encounters.append(
                (encounter_id, patient.id, admitted, code, _note(rng, patient, admitted, code, description))
            )
            choices = typical or FALLBACK_PRESCRIPTIONS
            for _ in range(rng.randint(0, 3)):
                drug, dose = rng.choice(choices)
                prescriptions.append((len(prescriptions) + 1, encounter_id, drug, dose))
    return encounters, prescriptions


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _copy_rows(
    cur: psycopg.Cursor[tuple[object, ...]], table: str, columns: str, rows: Iterable[Sequence[object]]
) -> None:
    with cur.copy(f"COPY public.{table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _diagnosis_rows() -> Iterator[tuple[str, str]]:
    return ((code, description) for code, description, _ in DIAGNOSES)


def load_clinic(conn: psycopg.Connection, patients: int = 10_000, seed: int = DEFAULT_SEED) -> ClinicCounts:
    """Create the clinic schema in an empty database and fill it with seeded fake data, atomically.

    One transaction, so an interrupted load leaves nothing behind and a restart simply loads again.
    The database must not already contain the tables (the orchestrator checks before calling).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    rng = random.Random(seed)
    people = generate_patients(rng, patients)
    encounters, prescriptions = generate_visits(rng, people)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CLINIC_SCHEMA_SQL)
        _copy_rows(cur, "diagnosis_codes", "code, description", _diagnosis_rows())
        _copy_rows(
            cur,
            "patients",
            "id, mrn, full_name, date_of_birth, ssn, phone, email, address, zip",
            (person.row() for person in people),
        )
        _copy_rows(cur, "encounters", "id, patient_id, admitted_at, diagnosis_code, notes", encounters)
        _copy_rows(cur, "prescriptions", "id, encounter_id, drug, dose", prescriptions)
        for table in ("diagnosis_codes", "patients", "encounters", "prescriptions"):
            cur.execute(f"ANALYZE public.{table}")
    return ClinicCounts(patients=len(people), encounters=len(encounters), prescriptions=len(prescriptions))


def clinic_is_loaded(conn: psycopg.Connection) -> bool:
    """True when a previous run already loaded the clinic: restarts then keep the data (and its owners)."""
    row = conn.execute(
        "SELECT to_regclass('public.patients') IS NOT NULL AND to_regclass('public.prescriptions') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return False
    count = conn.execute("SELECT EXISTS (SELECT 1 FROM public.patients)").fetchone()
    return bool(count and count[0])
