"""
The operators' console: agents, credentials (secrets and keys), trust policies and the audit trail.

Every change goes through credentials.services, exactly as the API's do, with the staff
user as the actor in the audit trail: suspending and reactivating agents, issuing,
rotating and deleting credentials. Rows are shown read-only, and Django's own add and
delete views and its bulk delete action are replaced, so nothing can skip a secret store
or the audit trail.

No page shows a hash or what a Vault path holds. A new secret appears once, on the page
that answers the rotation or issue that made it (never cached, never in a message or
the admin's log), and nowhere afterwards. Nor does any list filter on them: a changelist
accepts only the lookups its own filters and date hierarchy make (ConsoleAdmin).
"""

from .agents import AgentAdmin
from .audit import AuditEventAdmin
from .base import ConsoleAdmin, touches_secret
from .credentials import CredentialAdmin
from .policies import TrustPolicyAdmin

__all__ = ["AgentAdmin", "AuditEventAdmin", "ConsoleAdmin", "CredentialAdmin", "TrustPolicyAdmin", "touches_secret"]
