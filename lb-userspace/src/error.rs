//! Error types of the agent, one enum per subsystem, each variant with its context.

use std::path::PathBuf;

/// Loading the XDP object, opening its maps, attaching it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the XDP object failed (is this root, with BPF and BTF available?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "the pinned maps under {dir} have map layout {found}, this build expects {want}: they belong to an incompatible build of lb, and reusing them would misread every entry. Stop the agent that uses them (`lb agent` removes its pins when it stops), or remove the directory (`rm -r {dir}`), which resets the flows it tracks; then start this agent"
    )]
    Layout {
        dir: PathBuf,
        found: String,
        want: String,
    },
    #[error(
        "the pinned map {map} under {dir} was created for {setting} = {pinned}, but this agent asks for {want}: a pinned map keeps the size it was created with. Set {setting} back to {pinned}, or stop the agent that uses the pins (a plain stop removes them) or remove the directory (`rm -r {dir}`), which resets the flows it tracks; then start this agent"
    )]
    Size {
        dir: PathBuf,
        map: &'static str,
        setting: &'static str,
        pinned: u32,
        want: u32,
    },
    #[error("the XDP object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {what}: {source}")]
    Program {
        what: String,
        source: aya::programs::ProgramError,
    },
}

/// A kernel map operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map} failed: {source}")]
pub struct MapOpError {
    pub map: &'static str,
    pub op: String,
    pub source: aya::maps::MapError,
}

/// Why a requested change was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Bad input: the message names the field and the problem.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} does not exist")]
    NotFound(String),
    /// The change collides with what exists (the thing exists already).
    #[error("{0} already exists")]
    Conflict(String),
    /// A map or table is full; the message names the limit.
    #[error("{0}")]
    Capacity(String),
    /// A map write failed; the message says what was done about it (rolled back, or not).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Map(#[from] MapOpError),
}

impl ChangeError {
    /// The kind a client sees (and the CLI turns into its exit code).
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Capacity(_) => ErrorKind::Capacity,
            Self::Failed(_) | Self::Map(_) => ErrorKind::Failed,
        }
    }
}

/// What kind of refusal an error is, as the control socket reports it. The CLI exits with a
/// distinct code for each ([`ErrorKind::exit_code`]), so scripts can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input: a field that does not parse or is out of range.
    Invalid,
    /// The service, backend, rule or PIP named does not exist.
    NotFound,
    /// It exists already, or collides with what exists.
    Conflict,
    /// A map or table would overflow.
    Capacity,
    /// The data plane refused a write; the message says whether the change was rolled back.
    Failed,
    /// The caller may not use the control socket (not root).
    Denied,
    /// The agent cannot take the request now (shutting down, too many connections).
    Unavailable,
}

impl ErrorKind {
    /// The `lb` exit code for this kind (0 is success, 1 a failure to reach the agent).
    #[must_use]
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Invalid => 2,
            Self::NotFound => 3,
            Self::Conflict => 4,
            Self::Capacity => 5,
            Self::Failed => 6,
            Self::Denied => 7,
            Self::Unavailable => 8,
        }
    }
}
