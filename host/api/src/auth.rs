//! API tokens, roles and plan-set scopes.
//!
//! A token is `hvn_<id>_<secret>`. The store keeps `tokens/<id>` with the
//! SHA-256 of the secret, never the secret; the secret is shown once, when
//! the token is created. Roles grow by inclusion: a viewer reads; an author
//! also edits plans and runs readiness checks; an operator also starts,
//! approves, cancels and resumes executions (and runs readiness checks);
//! an admin does everything, manages tokens and reads the audit log. A token
//! is scoped to plan sets (`["*"]`: all); it sees and touches only plans and
//! executions of those sets.

use std::path::Path;

use axum::http::HeaderMap;
use haven_store::{Command, CommandLog, Outcome};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Collection of tokens.
pub const TOKENS: &str = "tokens";
/// File, in the haven home, holding the bootstrap admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read plans, executions, reports, inventory.
    Viewer,
    /// Viewer, plus edit plans and run readiness checks.
    Author,
    /// Viewer, plus run executions (start, approve, cancel, resume) and readiness checks.
    Operator,
    /// Everything, tokens and the audit log included.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Author => "author",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// What a request wants to do, for the permission check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read.
    Read,
    /// Create, change or delete plans.
    EditPlans,
    /// Start, approve, cancel, resume executions.
    Operate,
    /// Run readiness checks.
    CheckReadiness,
    /// Manage tokens, read the audit log.
    Administer,
}

impl Permission {
    fn allowed(self, role: Role) -> bool {
        match self {
            Permission::Read => true,
            Permission::EditPlans => matches!(role, Role::Author | Role::Admin),
            Permission::Operate => matches!(role, Role::Operator | Role::Admin),
            Permission::CheckReadiness => role != Role::Viewer,
            Permission::Administer => role == Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::EditPlans => "edit plans (needs role author or admin)",
            Permission::Operate => "run executions or protect VMs (needs role operator or admin)",
            Permission::CheckReadiness => {
                "run readiness checks (needs role author, operator or admin)"
            }
            Permission::Administer => "administer tokens and read the audit log (needs role admin)",
        }
    }
}

/// A stored token (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Token id (public part).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Plan sets it may touch; `*` is every set.
    pub plan_sets: Vec<String>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Who created it.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: u64,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token id.
    pub token: String,
    /// Token name (shown in the audit log as `name (id)`).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Plan sets in scope.
    pub plan_sets: Vec<String>,
}

impl Caller {
    /// Who this is, for journals and the audit log.
    pub fn who(&self) -> String {
        format!("{} ({})", self.name, self.token)
    }

    /// Whether `plan_set` is within the token's scope.
    pub fn in_scope(&self, plan_set: &str) -> bool {
        self.plan_sets.iter().any(|s| s == "*" || s == plan_set)
    }

    /// Fails with 403 unless the role allows `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if permission.allowed(self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has role {} and cannot {}",
                self.token,
                self.role.as_str(),
                permission.describe()
            )))
        }
    }

    /// Fails with 403 unless the role allows `permission` on `plan_set`.
    pub fn require_in(&self, permission: Permission, plan_set: &str) -> Result<(), ApiError> {
        self.require(permission)?;
        if self.in_scope(plan_set) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` is scoped to plan sets [{}], not `{plan_set}`",
                self.token,
                self.plan_sets.join(", ")
            )))
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)
        .map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(buf))
}

/// Finds the caller of a request from `Authorization: Bearer <token>`.
pub fn authenticate(log: &dyn CommandLog, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header; the admin token is in <home>/admin-token",
            )
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?
        .trim();
    let invalid = || ApiError::unauthorized("invalid or revoked API token");
    let (id, secret) = token
        .strip_prefix("hvn_")
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(invalid)?;
    let record = log
        .store()
        .get_as::<TokenRecord>(TOKENS, id)?
        .ok_or_else(invalid)?
        .value;
    // Equal hashes of a secret: comparing digests leaks nothing useful in time.
    if record.secret_sha256 != sha256_hex(secret) {
        return Err(invalid());
    }
    Ok(Caller {
        token: record.id,
        name: record.name,
        role: record.role,
        plan_sets: record.plan_sets,
    })
}

/// A request to create a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Plan sets in scope (default: every set).
    #[serde(default = "all_sets")]
    pub plan_sets: Vec<String>,
}

fn all_sets() -> Vec<String> {
    vec!["*".into()]
}

/// A created token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    /// The token to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Its stored record.
    #[serde(flatten)]
    pub record: TokenRecord,
}

/// Creates a token and stores its hash.
pub async fn create_token(
    log: &dyn CommandLog,
    new: NewToken,
    by: &str,
    now_ms: u64,
) -> Result<CreatedToken, ApiError> {
    if new.name.trim().is_empty() {
        return Err(ApiError::invalid("a token needs a non-empty name").field("name"));
    }
    if new.plan_sets.is_empty() || new.plan_sets.iter().any(|s| s.trim().is_empty()) {
        return Err(ApiError::invalid(
            "plan_sets must list at least one non-empty plan set (`*` for all)",
        )
        .field("plan_sets"));
    }
    let id = random_hex(6)?;
    let secret = random_hex(24)?;
    let record = TokenRecord {
        id: id.clone(),
        name: new.name,
        role: new.role,
        plan_sets: new.plan_sets,
        secret_sha256: sha256_hex(&secret),
        created_by: by.to_owned(),
        created_at_ms: now_ms,
    };
    let applied = log
        .commit(vec![Command::Put {
            collection: TOKENS.into(),
            key: id.clone(),
            value: serde_json::to_value(&record).expect("tokens serialize"),
            expected_version: Some(0),
        }])
        .await?;
    if applied
        .iter()
        .any(|a| matches!(a.outcome, Outcome::Conflict { .. }))
    {
        return Err(ApiError::conflict("token id collision; retry"));
    }
    Ok(CreatedToken {
        token: format!("hvn_{id}_{secret}"),
        record,
    })
}

/// On first start (no token stored yet), creates an admin token and writes
/// it to `<home>/admin-token` with mode 0600. Returns whether it did.
pub async fn bootstrap_admin(
    log: &dyn CommandLog,
    home: &Path,
    now_ms: u64,
) -> Result<bool, BootstrapError> {
    if !log
        .store()
        .list(TOKENS)
        .map_err(|e| BootstrapError(e.to_string()))?
        .is_empty()
    {
        return Ok(false);
    }
    let created = create_token(
        log,
        NewToken {
            name: "bootstrap admin".into(),
            role: Role::Admin,
            plan_sets: all_sets(),
        },
        "haven (first start)",
        now_ms,
    )
    .await
    .map_err(|e| BootstrapError(e.message))?;
    write_secret_file(&home.join(ADMIN_TOKEN_FILE), &created.token)
        .map_err(|e| BootstrapError(format!("{}: {e}", home.join(ADMIN_TOKEN_FILE).display())))?;
    tracing::info!(
        "created the bootstrap admin token in {}",
        home.join(ADMIN_TOKEN_FILE).display()
    );
    Ok(true)
}

/// Why the bootstrap admin token could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the bootstrap admin token: {0}")]
pub struct BootstrapError(String);

fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
