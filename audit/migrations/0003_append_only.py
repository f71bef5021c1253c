"""Audit events are append-only, enforced by the database for every role that does not own the triggers.

UPDATE and DELETE are refused row by row, TRUNCATE statement-wide. Our own code only ever inserts; this makes
tampering through the application's credentials fail loudly. A superuser can still disable triggers: detecting
that is the hash chain's job (issue 5), not this one's.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit events are append-only: % on audit_auditevent is refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_auditevent
  FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_auditevent
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
"""

BACKWARD = """
DROP TRIGGER audit_no_truncate ON audit_auditevent;
DROP TRIGGER audit_no_update_or_delete ON audit_auditevent;
DROP FUNCTION audit_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_policy_changed_kind")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
