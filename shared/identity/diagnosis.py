"""The diagnosis catalogue: one table from a failure code to its likely cause and its fix.

Used by :class:`~shared.errors.AuthError` (every identity failure carries an entry) and by the
doctor. Texts may name ``{client_id}``, ``{tenant_id}``, ``{resource}``, ``{name}``,
``{identity}``, ``{vault}``, ``{url}``; missing values render as ``<...>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.errors import AuthError

ADMIN_CENTER = "Power Platform admin center > Environments > <environment> > Settings > Users + permissions"
KV_SECRETS_USER_ROLE_ID = "4633458b-17de-408a-b874-0445c86b69e6"
KV_CERTIFICATE_USER_ROLE_ID = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
GRAPH_APPLICATION_READ_ALL_ID = "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30"
GRAPH_APPLICATION_READWRITE_OWNEDBY_ID = "18a4783c-866b-4cc7-a460-3d5e5662c884"
KV_SECRETS_OFFICER_ROLE_ID = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
GRANT_SCRIPT = (
    "AZURE_APP_PRINCIPAL_ID=$(azd env get-value AZURE_APP_PRINCIPAL_ID) DATAVERSE_CLIENT_ID={client_id}"
    " ./infra/scripts/grant-graph-permission.sh"
)
GRANT_ROTATION_ACCESS = "azd env set GRANT_ROTATION_ACCESS true && azd provision"


@dataclass(frozen=True)
class Diagnosis:
    code: str
    title: str
    cause: str
    fix: str
    retryable: bool = False  # "not reachable or not answering now": a later try can succeed unchanged


_ENTRIES = [
    # --- Entra ID token endpoint (AADSTS) ---------------------------------------------------------
    Diagnosis(
        "AADSTS700016",
        "application not found in the tenant",
        "Entra has no application with client ID {client_id} in tenant {tenant_id}: DATAVERSE_CLIENT_ID holds the"
        " object ID or a secret ID instead of the Application (client) ID, or the app is registered in another"
        " tenant.",
        "Copy the 'Application (client) ID' from Entra admin center > App registrations > the app > Overview into"
        " DATAVERSE_CLIENT_ID, and the 'Directory (tenant) ID' from the same page into DATAVERSE_TENANT_ID.",
    ),
    Diagnosis(
        "AADSTS7000215",
        "invalid client secret",
        "Entra rejected the client secret read from Key Vault ({name}): it is not a current secret of app"
        " {client_id}. Usually the secret's ID was stored instead of its Value, or the secret was deleted or"
        " replaced in Entra without a new version in Key Vault.",
        "In Entra admin center > App registrations > the app > Certificates & secrets, create a new client secret,"
        " copy its Value (shown once) and store it as a new version of Key Vault secret {name}. dvbridge re-reads"
        " Key Vault immediately after this error, so no restart is needed.",
    ),
    Diagnosis(
        "AADSTS7000222",
        "client secret expired",
        "The client secret of app {client_id} stored in Key Vault ({name}) has passed its end date in Entra.",
        "Create a new client secret for the app, store it as a new version of Key Vault secret {name} with its"
        " expiry date set and the tag entraKeyId=<the new secret's key ID>, then delete the expired secret in"
        " Entra. dvbridge's expiry monitor warns 30/14/7/1 days ahead next time; consider a certificate.",
    ),
    Diagnosis(
        "AADSTS7000218",
        "no client credential in the request",
        "The token request carried neither a client secret nor a certificate assertion: the Key Vault object"
        " {name} is empty or unreadable as a credential.",
        "Store the client secret value (or a PEM/PFX certificate) in Key Vault object {name}.",
    ),
    Diagnosis(
        "AADSTS700027",
        "certificate assertion rejected",
        "Entra could not verify the certificate assertion for app {client_id}: the certificate in Key Vault ({name})"
        " is not uploaded to the app registration, its thumbprint differs from the uploaded one, its private key"
        " does not match, or it has expired.",
        "Download the public part (.cer) of Key Vault certificate {name} and upload it under App registrations >"
        " the app > Certificates & secrets > Certificates; check the thumbprints match and the certificate is"
        " within its validity period.",
    ),
    Diagnosis(
        "AADSTS700024",
        "assertion outside its valid time range",
        "The signed certificate assertion was not valid at the time Entra checked it: this machine's clock is"
        " wrong, or the request was delayed long enough for the assertion to expire.",
        "Synchronise the host clock (NTP) and retry; on Azure this is transient, so retry with backoff.",
    ),
    Diagnosis(
        "AADSTS500011",
        "resource (Dataverse environment) not found",
        "There is no resource principal named {resource} in tenant {tenant_id}: DATAVERSE_URL is not the"
        " environment's URL (typo, wrong region label such as crm vs crm4, a path after the host), or the"
        " environment belongs to another tenant.",
        "Set DATAVERSE_URL to the Environment URL shown in Power Platform admin center > Environments > the"
        " environment, e.g. https://contoso.crm4.dynamics.com (no path, no trailing /api/data).",
    ),
    Diagnosis(
        "AADSTS90002",
        "tenant not found",
        "Entra has no tenant {tenant_id} (in this cloud): DATAVERSE_TENANT_ID is mistyped or belongs to another cloud.",
        "Copy the 'Directory (tenant) ID' from the app registration's Overview page into DATAVERSE_TENANT_ID; for"
        " sovereign clouds set ENTRA_AUTHORITY_HOST (e.g. https://login.microsoftonline.us).",
    ),
    Diagnosis(
        "AADSTS65001",
        "consent missing",
        "An administrator has not consented to app {client_id} for the permissions it requests. Server-to-server"
        " access to Dataverse needs no API permission at all; this appears when the app requests delegated"
        " permissions (Dynamics CRM user_impersonation) that nobody consented to.",
        "Grant admin consent under App registrations > the app > API permissions, or remove the delegated"
        " permission and use an application user in Dataverse (" + ADMIN_CENTER + " > Application users).",
    ),
    Diagnosis(
        "AADSTS50076",
        "multi-factor authentication required",
        "A user name and password sign-in (the resource-owner password grant) hit a policy that requires MFA,"
        " which that grant cannot satisfy.",
        "Use server-to-server authentication: an app registration with a client secret or certificate and an"
        " application user in Dataverse.",
    ),
    Diagnosis(
        "AADSTS1002012",
        "invalid scope",
        "The token request's scope did not end in /.default, which client-credential requests require.",
        "Leave the scope to dvbridge: it requests {resource}/.default from DATAVERSE_URL.",
    ),
    Diagnosis(
        "EntraUnreachable",
        "cannot reach Entra ID",
        "The token endpoint under {url} did not answer: no outbound network, a proxy or firewall in the way, or"
        " ENTRA_AUTHORITY_HOST is wrong.",
        "Check outbound HTTPS to the authority host (login.microsoftonline.com in the public cloud) and the"
        " ENTRA_AUTHORITY_HOST setting.",
        retryable=True,
    ),
    Diagnosis(
        "EntraUnavailable",
        "Entra ID answered with a server error or throttled",
        "The token endpoint answered 429 or 5xx.",
        "Transient: dvbridge retries later (MSAL holds back for the Retry-After period). If it persists, check"
        " the Azure status page.",
        retryable=True,
    ),
    Diagnosis(
        "AuthorityDiscoveryFailed",
        "cannot read the tenant's OpenID configuration",
        "MSAL could not load {url}/v2.0/.well-known/openid-configuration.",
        "Check DATAVERSE_TENANT_ID and ENTRA_AUTHORITY_HOST; only for non-Microsoft hosts (a local emulator)"
        " set ENTRA_INSTANCE_DISCOVERY=false.",
    ),
    # --- managed identity ---------------------------------------------------------------------------
    Diagnosis(
        "ManagedIdentityUnavailable",
        "managed identity not available",
        "No managed-identity token could be obtained: the function app has no identity enabled, or outside Azure"
        " IDENTITY_ENDPOINT/IDENTITY_HEADER are not set (or the header is wrong).",
        "Enable the system-assigned identity (Function App > Identity), or assign a user-assigned identity and"
        " set AZURE_CLIENT_ID to its client ID. Locally, start devstack and source .devstack/env.",
        retryable=True,
    ),
    Diagnosis(
        "ManagedIdentityNotFound",
        "user-assigned identity not assigned to this app",
        "AZURE_CLIENT_ID={identity} names a user-assigned identity that is not attached to this function app.",
        "Attach the identity under Function App > Identity > User assigned, or correct AZURE_CLIENT_ID (leave it"
        " empty to use the system-assigned identity).",
    ),
    # --- Key Vault ------------------------------------------------------------------------------------
    Diagnosis(
        "ForbiddenByRbac",
        "Key Vault role missing",
        "The app's managed identity ({identity}) has no data-plane role that allows reading {name} in vault {vault}.",
        "Assign 'Key Vault Secrets User' (" + KV_SECRETS_USER_ROLE_ID + ") on the vault to the identity; for a"
        " certificate credential also 'Key Vault Certificate User' (" + KV_CERTIFICATE_USER_ROLE_ID + ") scoped to"
        " that certificate alone (main.bicep's grantRotationAccess), not the vault."
        " Role assignments can take a few minutes to apply.",
    ),
    Diagnosis(
        "Forbidden",
        "Key Vault access denied",
        "Key Vault refused the identity ({identity}) access to {name}; with an access-policy vault the identity"
        " is on no access policy.",
        "Prefer RBAC: set the vault's permission model to Azure RBAC and assign 'Key Vault Secrets User'; or add"
        " a Get permission for secrets to the identity's access policy.",
    ),
    Diagnosis(
        "SecretNotFound",
        "secret not found",
        "Vault {vault} has no secret named {name}.",
        "Create the secret or correct DATAVERSE_CLIENT_SECRET_NAME / DATAVERSE_CERTIFICATE_NAME (names are"
        " letters, digits and dashes).",
    ),
    Diagnosis(
        "CertificateNotFound",
        "certificate not found",
        "Vault {vault} has no certificate named {name}.",
        "Import the certificate (PEM or PFX with its private key) into the vault or correct"
        " DATAVERSE_CERTIFICATE_NAME.",
    ),
    Diagnosis(
        "SecretDisabled",
        "secret disabled",
        "The current version of {name} is disabled in vault {vault}.",
        "Enable the version in Key Vault, or set a new enabled version.",
    ),
    Diagnosis(
        "KeyVaultUnauthorized",
        "Key Vault rejected the token",
        "Key Vault did not accept the managed identity's token (wrong tenant or expired).",
        "Check that the vault is in the same tenant as the function app's identity.",
    ),
    Diagnosis(
        "KeyVaultUnreachable",
        "cannot reach Key Vault",
        "{vault} did not answer: wrong KEY_VAULT_URL, firewall or private-endpoint rules, or DNS.",
        "Check KEY_VAULT_URL (https://<name>.vault.azure.net) and the vault's Networking settings.",
        retryable=True,
    ),
    Diagnosis(
        "KeyVaultUnavailable",
        "Key Vault throttled or answered with a server error",
        "{vault} answered {detail}.",
        "Transient: dvbridge keeps serving the secret it read last (within SECRET_MAX_STALE_S) and reads again on"
        " a later invocation. If it persists, check the vault's request rate and the Azure status page.",
        retryable=True,
    ),
    Diagnosis(
        "ChallengeResourceMismatch",
        "Key Vault challenge does not match the vault host",
        "The vault at {vault} is not a *.vault.azure.net host, so the SDK refused to send a token to it.",
        "Use the vault's real URL. Only for a local emulator set KEY_VAULT_VERIFY_CHALLENGE_RESOURCE=false.",
    ),
    # --- Microsoft Graph ------------------------------------------------------------------------------
    Diagnosis(
        "Authorization_RequestDenied",
        "Graph permission missing",
        "The managed identity ({identity}) lacks the Graph application permission to read app registrations,"
        " so credential end dates in Entra cannot be checked.",
        "Have an administrator grant the app role Application.Read.All (" + GRAPH_APPLICATION_READ_ALL_ID + ") to the"
        " identity's service principal (New-MgServicePrincipalAppRoleAssignment), or add the identity as an owner"
        " of the app with Application.ReadWrite.OwnedBy.",
    ),
    # --- credential rotation readiness (the doctor's rotation readiness step) --------------------------
    Diagnosis(
        "RotationGraphPermissionMissing",
        "Graph permission for rotation missing",
        "{identity} holds no Graph application permission that adds and removes credentials of app registration"
        " {client_id}: its Graph token's app roles are {detail}. Rotation's addPassword/addKey would be refused.",
        "As an administrator, run "
        + GRANT_SCRIPT
        + ": it grants Application.ReadWrite.OwnedBy ("
        + GRAPH_APPLICATION_READWRITE_OWNEDBY_ID
        + ") and makes the identity an owner of the registration. A"
        " managed identity's tokens are cached by the platform, so a new app role can take a while to show.",
    ),
    Diagnosis(
        "RotationGraphPermissionBroad",
        "Graph permission broader than rotation needs",
        "{identity} holds Application.ReadWrite.All: rotation works, but the identity could change the credentials"
        " of every app registration in the tenant, and so act as any of them.",
        "Grant Application.ReadWrite.OwnedBy and ownership of app {client_id} instead (" + GRANT_SCRIPT + "), then"
        " remove the ReadWrite.All app role assignment from the identity's service principal.",
    ),
    Diagnosis(
        "RotationNotOwner",
        "not an owner of the app registration",
        "{identity} (object id {object_id}) is not among the owners of app registration {client_id}:"
        " Application.ReadWrite.OwnedBy reaches only registrations the identity owns.",
        "Run " + GRANT_SCRIPT + " (it adds the ownership), or: az ad app owner add --id {client_id}"
        " --owner-object-id {object_id}",
    ),
    Diagnosis(
        "RotationKeyVaultRoleMissing",
        "no Key Vault role to write the secret",
        "{identity} cannot store a new version of secret {name} or disable the old one: its Key Vault roles lack"
        " {detail}.",
        "Assign Key Vault Secrets Officer (" + KV_SECRETS_OFFICER_ROLE_ID + ") scoped to that one secret: main.bicep"
        " does it with grantRotationAccess (" + GRANT_ROTATION_ACCESS + "), or az role assignment create"
        " --assignee {object_id} --role 'Key Vault Secrets Officer' --scope {resource}/secrets/{name}."
        " Role assignments can take a few minutes to apply.",
    ),
    Diagnosis(
        "RotationKeyVaultRoleBroad",
        "Key Vault role broader than rotation needs",
        "{identity} may write every secret in the vault (a vault-wide role such as Key Vault Secrets Officer),"
        " the alert channels' URLs included; rotation needs to write {name} only.",
        "Replace the vault-wide assignment with Key Vault Secrets Officer scoped to {resource}/secrets/{name}"
        " (main.bicep's grantRotationAccess), then delete the vault-wide one (az role assignment delete).",
    ),
    Diagnosis(
        "RotationCertificateRoleMissing",
        "no Key Vault role to read the certificate's versions",
        "{identity} cannot read the versions of certificate {name}, which rotation uploads to Entra once Key Vault"
        " renewed it: its Key Vault roles lack {detail}.",
        "Assign Key Vault Certificate User (" + KV_CERTIFICATE_USER_ROLE_ID + ") scoped to the certificate (main.bicep"
        " with grantRotationAccess: "
        + GRANT_ROTATION_ACCESS
        + ") and keep the vault-wide Key Vault Secrets User ("
        + KV_SECRETS_USER_ROLE_ID
        + "), which reads the certificate's private key through its backing secret.",
    ),
    Diagnosis(
        "RotationCertificateNotRegistered",
        "the certificate in use is not a valid credential of the app",
        "Certificate {name} (thumbprint {detail}) is not a currently valid certificate of app registration"
        " {client_id} in Entra. Graph's addKey requires a proof signed by one, so rotation cannot add the next.",
        "Upload the certificate's public part (.cer) to the app registration (Certificates & secrets >"
        " Certificates) while it is within its validity period; once it has expired, upload the renewed one by hand.",
    ),
    Diagnosis(
        "RotationKeyVaultNotChecked",
        "Key Vault role not checked",
        "The doctor cannot ask Azure Resource Manager for the identity's role on {name}: {detail}.",
        "Set KEY_VAULT_RESOURCE_ID to the vault's resource id (az keyvault show --name <vault> --query id -o tsv:"
        " /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.KeyVault/vaults/<vault>); main.bicep sets"
        " it.",
    ),
    Diagnosis(
        "ArmPermissionsUnreadable",
        "Azure Resource Manager did not list the permissions",
        "Azure Resource Manager did not list the identity's permissions on {resource}: {detail}.",
        "Check KEY_VAULT_RESOURCE_ID (the vault's resource id) and ARM_URL, and that the identity holds a role with"
        " Microsoft.Authorization/*/read on the vault (main.bicep's Key Vault Reader has it).",
    ),
    Diagnosis(
        "GraphTokenUnreadable",
        "no readable Graph token",
        "The managed identity's Graph token could not be obtained or read ({detail}).",
        "Check GRAPH_URL; the Graph permission and ownership could not be checked.",
    ),
    # --- Dataverse Web API ---------------------------------------------------------------------------
    Diagnosis(
        "DataverseUnauthorized",
        "Dataverse rejected the token (401)",
        "The token's audience is not this environment (a token for Graph or for the app's own Application ID URI,"
        " or DATAVERSE_URL differs from the URL the token was requested for), or it expired.",
        "Set DATAVERSE_URL to the environment URL; dvbridge requests <DATAVERSE_URL>/.default and refreshes"
        " tokens before expiry.",
    ),
    Diagnosis(
        "DataverseUnreachable",
        "cannot reach Dataverse",
        "{url} did not answer: wrong DATAVERSE_URL, DNS, or outbound network rules.",
        "Check DATAVERSE_URL against the environment URL in Power Platform admin center, and outbound HTTPS.",
        retryable=True,
    ),
    Diagnosis(
        "0x8005F101",
        "authentication required",
        "Dataverse found no valid authentication on the request (expired or missing token).",
        "Retry with a fresh token; if it persists check DATAVERSE_URL and the tenant.",
    ),
    Diagnosis(
        "0x80072560",
        "no application user in the environment",
        "The token is valid, but environment {url} has no application user for app {client_id}.",
        "Create one: " + ADMIN_CENTER + " > Application users > New app user, pick the app registration,"
        " the business unit, and a security role.",
    ),
    Diagnosis(
        "0x80095ffc",
        "application blocked by policy",
        "An administrator restricted Dataverse API access, and app {client_id} is not allowed.",
        "Ask the Power Platform administrator to allow the app ID for this environment.",
    ),
    Diagnosis(
        "0x80042f09",
        "application user has no security role",
        "The application user for app {client_id} exists but has no security role.",
        "Assign a security role to the application user (" + ADMIN_CENTER + " > Application users > Edit roles).",
    ),
    Diagnosis(
        "0x80040220",
        "privilege missing",
        "The application user's roles lack a privilege this operation needs (e.g. prvReadAccount).",
        "Add a security role that grants the privilege named in the message, at the needed access level.",
    ),
    Diagnosis(
        "0x80048306",
        "no access to the record",
        "The application user has the privilege, but not at a depth that covers this record's owner or business unit.",
        "Raise the privilege's access level in the role (e.g. Business Unit -> Organization) or share the records.",
    ),
    Diagnosis(
        "UserNotMemberOfCdsSecurityGroup",
        "not in the environment's security group",
        "The environment is restricted to a security group and the caller is not a member.",
        "Add the principal to the environment's security group, or remove the restriction.",
    ),
    # --- connection strings ---------------------------------------------------------------------------
    Diagnosis(
        "PasswordAuthRefused",
        "user name and password authentication refused",
        "The connection string uses AuthType={auth_type} with a user name and password: the resource-owner password"
        " grant of older NAV/Business Central and SSIS setups. It cannot satisfy MFA (AADSTS50076), depends on"
        " deprecated legacy authentication, and puts a person's password into an integration, which stops"
        " working when they leave or change it.",
        "Move to server-to-server authentication: register an app in Entra, create an application user for it ("
        + ADMIN_CENTER
        + " > Application users) with a security role, and store AuthType=ClientSecret;Url=<environment URL>;"
        "ClientId=<app id>;ClientSecret=<secret> (or just the secret value) in Key Vault.",
    ),
]

CATALOGUE: dict[str, Diagnosis] = {d.code: d for d in _ENTRIES}
_AADSTS = re.compile(r"AADSTS(\d+)")


class _Blanks(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def diagnose(code: str, **context: Any) -> Diagnosis:
    """Return the catalogue entry for ``code`` with ``context`` filled in (unknown codes get a generic entry)."""
    entry = CATALOGUE.get(code)
    if entry is None:
        match = _AADSTS.fullmatch(code)
        lookup = f"https://login.microsoftonline.com/error?code={match.group(1)}" if match else "the service's docs"
        entry = Diagnosis(code, "unrecognised failure", "{detail}", f"Look the code up at {lookup}.")
    values = _Blanks({k: v for k, v in context.items() if v not in (None, "")})
    return Diagnosis(
        entry.code, entry.title, entry.cause.format_map(values), entry.fix.format_map(values), entry.retryable
    )


def aadsts_code(description: str | None, codes: list[int] | None = None) -> str | None:
    """The ``AADSTSnnnn`` code from an error's ``error_codes`` or its description."""
    if codes:
        return f"AADSTS{codes[0]}"
    match = _AADSTS.search(description or "")
    return f"AADSTS{match.group(1)}" if match else None


def auth_error(code: str, *, step: str, detail: str = "", status: int | None = None, **context: Any) -> AuthError:
    """Build the :class:`AuthError` for ``code`` from the catalogue."""
    found = diagnose(code, detail=detail, **context)
    return AuthError(
        found.code, cause=found.cause, fix=found.fix, step=step, detail=detail, status=status, retryable=found.retryable
    )
