"""
Every change to agents and credentials, one implementation of each step.

The API, the console, bootstrap_admin and migrate_to_vault all call these functions. Each
takes `acting` (a staff user, an authenticated agent, or None for the system) and writes one
audit event per change. Plaintext secrets exist only in the IssuedCredential they return.

By job: `agents` (register, change, delete), `lifecycle` (a credential's create, rotate,
delete and grace periods, for secret and key credentials), `policies` (trust policies for
platform identities), `moves` (a secret to the default store: on use, or by
migration), `purges` (the outbox that destroys what a store keeps once nothing trusts it)
and `missing` (secrets a store lost). Checking a presented secret is client authentication's
job (credentials.clientauth).
"""

from .agents import AGENT_UPDATABLE_FIELDS, NAME_MAX_LENGTH, agent_create, agent_delete, agent_update
from .lifecycle import (
    MAX_GRACE_PERIOD_SECONDS,
    MAX_GRACE_SECRETS,
    IssuedCredential,
    StorageChanged,
    credential_create,
    credential_delete,
    credential_rotate,
    generate_client_id,
    generate_client_secret,
    grace_keys_expire,
    grace_secrets_expire,
)
from .missing import (
    SECRET_MISSING_REPEAT_SECONDS,
    SECRET_MISSING_REPORT_SECONDS,
    SecretCheck,
    credential_secret_missing,
    credential_secrets_check,
    secrets_missing_count,
    secrets_missing_forget,
)
from .moves import credential_migrate, credential_move_to_default
from .policies import (
    MAX_CLAIM_NAME,
    MAX_CLAIM_VALUES,
    MAX_POLICY_CLAIMS,
    MAX_POLICY_TEXT,
    MAX_TOKEN_AGE_SECONDS,
    MAX_TRUST_POLICIES,
    RESERVED_CLAIMS,
    trust_policy_create,
    trust_policy_delete,
)
from .purges import (
    PURGE_BATCH_AFTER_WRITE,
    PURGE_FIRST_DELAY_SECONDS,
    PURGE_MAX_DELAY_SECONDS,
    PurgeReport,
    secret_purge_attempt,
    secret_purges_run,
    secret_purges_run_due,
)

__all__ = [
    "AGENT_UPDATABLE_FIELDS",
    "MAX_CLAIM_NAME",
    "MAX_CLAIM_VALUES",
    "MAX_GRACE_PERIOD_SECONDS",
    "MAX_GRACE_SECRETS",
    "MAX_POLICY_CLAIMS",
    "MAX_POLICY_TEXT",
    "MAX_TOKEN_AGE_SECONDS",
    "MAX_TRUST_POLICIES",
    "NAME_MAX_LENGTH",
    "PURGE_BATCH_AFTER_WRITE",
    "PURGE_FIRST_DELAY_SECONDS",
    "PURGE_MAX_DELAY_SECONDS",
    "RESERVED_CLAIMS",
    "SECRET_MISSING_REPEAT_SECONDS",
    "SECRET_MISSING_REPORT_SECONDS",
    "IssuedCredential",
    "PurgeReport",
    "SecretCheck",
    "StorageChanged",
    "agent_create",
    "agent_delete",
    "agent_update",
    "credential_create",
    "credential_delete",
    "credential_migrate",
    "credential_move_to_default",
    "credential_rotate",
    "credential_secret_missing",
    "credential_secrets_check",
    "generate_client_id",
    "generate_client_secret",
    "grace_keys_expire",
    "grace_secrets_expire",
    "secret_purge_attempt",
    "secret_purges_run",
    "secret_purges_run_due",
    "secrets_missing_count",
    "secrets_missing_forget",
    "trust_policy_create",
    "trust_policy_delete",
]
