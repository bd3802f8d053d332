//! State: what strata manages, as last applied and observed.
//!
//! A state has a `lineage` (a UUID made with it, never changed) and a `serial` (bumped on
//! every write). It is written after every resource, atomically (temporary file, fsync,
//! rename), so an interrupted apply loses at most the resource in flight; before a create,
//! an intent is recorded so that the next run knows something may exist that the state
//! does not hold yet.
//!
//! Storage is `Storage + Locker`; the local backend keeps the state in one JSON file and
//! the lock in a file beside it, created exclusively, holding who has it.
//!
//! Writing the whole state after every resource costs O(n) per resource, O(n²) per apply:
//! with 10,000 resources that is gigabytes. So a change is recorded as one line appended
//! (and fsynced) to a journal beside the state file, `<state>.journal`; reading replays the
//! journal over the state file, ignoring a torn last line; a full write (at the end of an
//! apply, and every [`COMPACT_EVERY`] changes) replaces the state file atomically and empties
//! the journal. A crash at any point leaves a state that reads back as every recorded change.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::render::Lifecycle;

/// The version of the state file format this strata writes.
pub const FORMAT_VERSION: u32 = 1;

/// Errors of state storage and locking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state.
    #[error("`{path}` is not a valid strata state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer strata.
    #[error("`{path}` has state format {found}; this strata reads format {FORMAT_VERSION}")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// Someone else holds the lock.
    #[error("the state is locked by {holder}")]
    Locked {
        /// Who.
        holder: Box<LockInfo>,
    },
    /// `force-unlock` with an id that does not hold the lock.
    #[error("the lock id `{given}` does not match the lock held ({})", held.as_ref().map(|h| h.id.as_str()).unwrap_or("none"))]
    LockMismatch {
        /// The id given.
        given: String,
        /// The lock there is, if any.
        held: Option<Box<LockInfo>>,
    },
}

/// `pub type Result`, as every module of strata has.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    /// The lock id, for `force-unlock`.
    pub id: String,
    /// The user.
    pub who: String,
    /// The machine.
    pub host: String,
    /// The process.
    pub pid: u32,
    /// `apply`, `plan`, `destroy`, ...
    pub operation: String,
    /// When it was taken (RFC 3339).
    pub since: String,
    /// The state it locks.
    pub path: String,
}

impl LockInfo {
    /// A lock for `operation` by this process.
    pub fn new(operation: &str, path: &str) -> LockInfo {
        LockInfo {
            id: uuid::Uuid::new_v4().to_string(),
            who: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into()),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            operation: operation.to_string(),
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            path: path.to_string(),
        }
    }

    /// True when the holder is a process of this machine that no longer runs.
    pub fn holder_is_gone(&self) -> bool {
        let here = gethostname::gethostname().to_string_lossy().into_owned();
        self.host == here && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} (pid {}) running `{}` since {}, lock id {}",
            self.who, self.host, self.pid, self.operation, self.since, self.id
        )
    }
}

/// One managed resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRecord {
    /// `provider.kind`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Its site.
    pub site: String,
    /// Its component.
    pub component: String,
    /// Its name.
    pub name: String,
    /// `name@version` of the blueprint that made it.
    pub blueprint: String,
    /// The provider's id.
    pub id: String,
    /// The spec last applied.
    pub spec: Value,
    /// The outputs after the last apply or refresh.
    pub outputs: Value,
    /// The provider's private data.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub private: Value,
    /// What it depended on when applied (deletes go in the reverse order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Its lifecycle rules when applied.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Sensitive fields of `spec` (JSON pointers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
}

impl ResourceRecord {
    /// The provider's view of it.
    pub fn provider_state(&self) -> strata_provider_sdk::ResourceState {
        strata_provider_sdk::ResourceState {
            id: self.id.clone(),
            spec: self.spec.clone(),
            outputs: self.outputs.clone(),
            private: self.private.clone(),
        }
    }
}

/// A change begun but not recorded as done: the next run reads the resource's live state
/// before deciding anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// `create`, `replace`.
    pub action: String,
    /// When (RFC 3339).
    pub since: String,
}

/// The whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// File format.
    pub version: u32,
    /// Made once with the state; a plan for another lineage is refused.
    pub lineage: String,
    /// Bumped on every write.
    pub serial: u64,
    /// The stack's name.
    pub stack: String,
    /// Managed resources by address.
    pub resources: BTreeMap<String, ResourceRecord>,
    /// Changes in flight when the last run stopped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intents: BTreeMap<String, Intent>,
}

impl State {
    /// A new, empty state.
    pub fn new(stack: &str) -> State {
        State {
            version: FORMAT_VERSION,
            lineage: uuid::Uuid::new_v4().to_string(),
            serial: 0,
            stack: stack.to_string(),
            resources: BTreeMap::new(),
            intents: BTreeMap::new(),
        }
    }
}

/// Full writes happen at least this often during an apply (journal compaction).
pub const COMPACT_EVERY: u64 = 1000;

/// One change to a state, as recorded between full writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum StateChange {
    /// A resource was created, updated or adopted.
    Put {
        /// Its address.
        address: String,
        /// Its record.
        record: Box<ResourceRecord>,
    },
    /// A resource was deleted.
    Remove {
        /// Its address.
        address: String,
    },
    /// A create or replace begins.
    Intend {
        /// Its address.
        address: String,
        /// The intent.
        intent: Intent,
    },
    /// A create or replace ended without making anything.
    Forget {
        /// Its address.
        address: String,
    },
}

impl StateChange {
    /// Applies the change (and bumps the serial).
    pub fn apply_to(&self, state: &mut State) {
        match self {
            StateChange::Put { address, record } => {
                state.intents.remove(address);
                state.resources.insert(address.clone(), (**record).clone());
            }
            StateChange::Remove { address } => {
                state.resources.remove(address);
            }
            StateChange::Intend { address, intent } => {
                state.intents.insert(address.clone(), intent.clone());
            }
            StateChange::Forget { address } => {
                state.intents.remove(address);
            }
        }
        state.serial += 1;
    }
}

/// Where a state is kept.
pub trait Storage: Send + Sync {
    /// Reads it; `None` when there is none yet.
    fn read(&self) -> Result<Option<State>>;
    /// Replaces it, atomically.
    fn write(&self, state: &State) -> Result<()>;
    /// Records one change durably; `state` is the state after it. Backends without a cheaper
    /// way write the whole state.
    fn record(&self, change: &StateChange, state: &State) -> Result<()> {
        let _ = change;
        self.write(state)
    }
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// The lock of a state.
pub trait Locker: Send + Sync {
    /// Takes the lock, or fails at once naming who holds it. Returns the lock id.
    fn lock(&self, operation: &str) -> Result<String>;
    /// Releases a lock this process holds.
    fn unlock(&self, id: &str) -> Result<()>;
    /// Removes the lock with this id, whoever holds it.
    fn force_unlock(&self, id: &str) -> Result<LockInfo>;
    /// Who holds the lock, if anyone.
    fn holder(&self) -> Result<Option<LockInfo>>;
}

/// A state backend.
pub trait Backend: Storage + Locker {}
impl<T: Storage + Locker> Backend for T {}

/// The state in a local JSON file; the lock in `<file>.lock`.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    path: PathBuf,
}

impl LocalBackend {
    /// A backend at `path`.
    pub fn new(path: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { path: path.into() }
    }

    fn lock_path(&self) -> PathBuf {
        self.beside(".lock")
    }

    fn journal_path(&self) -> PathBuf {
        self.beside(".journal")
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    /// Replays the journal over `state` (or over a new state when the journal starts one).
    fn replay(&self, mut state: Option<State>) -> Result<Option<State>> {
        let path = self.journal_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(Error::Io { action: "read", path, source: e }),
        };
        for line in text.lines() {
            // A line cut short by a crash is the change in flight: it did not happen. The
            // next append starts on a new line, so what follows it still counts.
            let Ok(entry) = serde_json::from_str::<JournalEntry>(line) else { continue };
            let current = state.get_or_insert_with(|| State {
                lineage: entry.lineage.clone(),
                serial: entry.serial.saturating_sub(1),
                ..State::new(&entry.stack)
            });
            if entry.lineage != current.lineage || entry.serial != current.serial + 1 {
                // Left from before the last full write (already in the state file): skip.
                continue;
            }
            entry.change.apply_to(current);
        }
        Ok(state)
    }

    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io { action, path: path.to_path_buf(), source }
    }

    fn read_lock(&self) -> Result<Option<LockInfo>> {
        let path = self.lock_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).unwrap_or_else(|_| LockInfo {
                id: "(unreadable)".into(),
                who: "unknown".into(),
                host: "unknown".into(),
                pid: 0,
                operation: "unknown".into(),
                since: "unknown".into(),
                path: path.display().to_string(),
            }))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { action: "read the lock", path, source: e }),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    lineage: String,
    stack: String,
    /// The serial after the change.
    serial: u64,
    change: StateChange,
}

impl Storage for LocalBackend {
    fn read(&self) -> Result<Option<State>> {
        let state = self.read_file()?;
        self.replay(state)
    }

    fn write(&self, state: &State) -> Result<()> {
        let mut bytes =
            serde_json::to_vec_pretty(state).map_err(|source| Error::Corrupt { path: self.path.clone(), source })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(Self::io("write", &self.path))?;
        match std::fs::remove_file(self.journal_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io { action: "remove", path: self.journal_path(), source: e }),
        }
    }

    fn record(&self, change: &StateChange, state: &State) -> Result<()> {
        let path = self.journal_path();
        let entry = JournalEntry {
            lineage: state.lineage.clone(),
            stack: state.stack.clone(),
            serial: state.serial,
            change: change.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|source| Error::Corrupt { path: path.clone(), source })?;
        line.push(b'\n');
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Self::io("create", dir))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(Self::io("open", &path))?;
        // After a torn line (a crash mid-append), start on a fresh line.
        {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let length = file.seek(SeekFrom::End(0)).map_err(Self::io("read", &path))?;
            if length > 0 {
                let mut last = [0u8; 1];
                file.seek(SeekFrom::End(-1))
                    .and_then(|_| file.read_exact(&mut last))
                    .map_err(Self::io("read", &path))?;
                if last[0] != b'\n' {
                    line.insert(0, b'\n');
                }
            }
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        file.write_all(&line).and_then(|_| file.sync_data()).map_err(Self::io("append to", &path))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl LocalBackend {
    fn read_file(&self) -> Result<Option<State>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io { action: "read", path: self.path.clone(), source: e });
            }
        };
        // Check the version first, so a newer format is named as such.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version =
            serde_json::from_str(&text).map_err(|source| Error::Corrupt { path: self.path.clone(), source })?;
        if version.version > FORMAT_VERSION {
            return Err(Error::NewerFormat { path: self.path.clone(), found: version.version });
        }
        serde_json::from_str(&text).map(Some).map_err(|source| Error::Corrupt { path: self.path.clone(), source })
    }
}

impl Locker for LocalBackend {
    fn lock(&self, operation: &str) -> Result<String> {
        let path = self.lock_path();
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Self::io("create", dir))?;
        }
        let info = LockInfo::new(operation, &self.path.display().to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                let bytes = serde_json::to_vec_pretty(&info).unwrap_or_default();
                file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(Self::io("write the lock", &path))?;
                Ok(info.id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match self.read_lock()? {
                Some(holder) => Err(Error::Locked { holder: Box::new(holder) }),
                // Released between our attempt and the read: try once more.
                None => self.lock(operation),
            },
            Err(e) => Err(Error::Io { action: "create the lock", path, source: e }),
        }
    }

    fn unlock(&self, id: &str) -> Result<()> {
        match self.read_lock()? {
            Some(held) if held.id == id => {
                std::fs::remove_file(self.lock_path()).map_err(Self::io("remove the lock", &self.path))
            }
            held => Err(Error::LockMismatch { given: id.to_string(), held: held.map(Box::new) }),
        }
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo> {
        match self.read_lock()? {
            Some(held) if held.id == id || held.id == "(unreadable)" => {
                std::fs::remove_file(self.lock_path()).map_err(Self::io("remove the lock", &self.path))?;
                Ok(held)
            }
            held => Err(Error::LockMismatch { given: id.to_string(), held: held.map(Box::new) }),
        }
    }

    fn holder(&self) -> Result<Option<LockInfo>> {
        self.read_lock()
    }
}

/// Replaces the sensitive fields of `spec` by `"(sensitive)"`.
pub fn redact(spec: &Value, sensitive: &[String]) -> Value {
    let mut spec = spec.clone();
    for pointer in sensitive {
        if let Some(v) = spec.pointer_mut(pointer) {
            *v = Value::String("(sensitive)".into());
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_roundtrip_and_lock_names_holder() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join(".strata/state.json"));
        assert!(backend.read().unwrap().is_none());
        let mut state = State::new("s");
        state.serial = 3;
        backend.write(&state).unwrap();
        assert_eq!(backend.read().unwrap(), Some(state));

        let id = backend.lock("apply").unwrap();
        let err = backend.lock("plan").unwrap_err();
        let Error::Locked { holder } = &err else { panic!("{err}") };
        assert_eq!(holder.id, id);
        assert_eq!(holder.operation, "apply");
        assert_eq!(holder.pid, std::process::id());
        assert!(matches!(backend.force_unlock("wrong"), Err(Error::LockMismatch { .. })));
        backend.force_unlock(&id).unwrap();
        let again = backend.lock("apply").unwrap();
        backend.unlock(&again).unwrap();
        assert!(backend.holder().unwrap().is_none());
    }

    #[test]
    fn journal_replays_over_the_state_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("state.json"));
        let mut state = State::new("s");
        backend.write(&state).unwrap();
        let record = ResourceRecord {
            resource_type: "local.file".into(),
            site: "lab".into(),
            component: "c".into(),
            name: "n".into(),
            blueprint: "b@1.0.0".into(),
            id: "/x".into(),
            spec: serde_json::json!({"a": 1}),
            outputs: serde_json::json!({}),
            private: Value::Null,
            depends_on: vec![],
            lifecycle: Lifecycle::default(),
            sensitive: vec![],
        };
        for change in [
            StateChange::Intend { address: "a".into(), intent: Intent { action: "create".into(), since: "t".into() } },
            StateChange::Put { address: "a".into(), record: Box::new(record.clone()) },
            StateChange::Put { address: "b".into(), record: Box::new(record) },
            StateChange::Remove { address: "b".into() },
        ] {
            change.apply_to(&mut state);
            backend.record(&change, &state).unwrap();
        }
        assert_eq!(state.serial, 4);
        assert_eq!(backend.read().unwrap().as_ref(), Some(&state));
        // A crash in the middle of an append leaves half a line: it is ignored.
        let journal = dir.path().join("state.json.journal");
        let mut text = std::fs::read_to_string(&journal).unwrap();
        text.push_str("{\"lineage\": \"x\", \"ser");
        std::fs::write(&journal, text).unwrap();
        assert_eq!(backend.read().unwrap().as_ref(), Some(&state));
        // Changes recorded after the torn line still count.
        let change = StateChange::Forget { address: "z".into() };
        change.apply_to(&mut state);
        backend.record(&change, &state).unwrap();
        assert_eq!(backend.read().unwrap().as_ref(), Some(&state));
        // A full write compacts the journal away.
        backend.write(&state).unwrap();
        assert!(!journal.exists());
        assert_eq!(backend.read().unwrap(), Some(state));
    }

    #[test]
    fn a_journal_without_a_state_file_is_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("state.json"));
        let mut state = State::new("s");
        let change = StateChange::Forget { address: "x".into() };
        change.apply_to(&mut state);
        backend.record(&change, &state).unwrap();
        assert_eq!(backend.read().unwrap(), Some(state));
    }

    #[test]
    fn corrupt_and_newer_states_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(LocalBackend::new(&path).read(), Err(Error::Corrupt { .. })));
        std::fs::write(&path, r#"{"version": 99}"#).unwrap();
        assert!(matches!(LocalBackend::new(&path).read(), Err(Error::NewerFormat { found: 99, .. })));
    }
}
