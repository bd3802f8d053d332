//! SSH connections: one session per host, owned by a dedicated thread (`ssh2` is
//! blocking), reused for every command on that host, reconnected when it drops.
//!
//! Jump hosts work like OpenSSH's `ProxyJump`: a session to the bastion opens a
//! `direct-tcpip` channel to the target, and a thread pumps bytes between that channel and
//! one end of a Unix socket pair whose other end carries the target's session. A bastion
//! may itself sit behind a bastion.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, Session};

/// Where and how to log in.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Host name for messages.
    pub name: String,
    /// Address to connect to.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key; the ssh-agent when `None`.
    pub identity_file: Option<PathBuf>,
    /// The jump host in front of it.
    pub via: Option<Box<Endpoint>>,
}

/// Host key checking.
#[derive(Debug, Clone, PartialEq)]
pub struct HostKeys {
    /// The known_hosts file.
    pub known_hosts: PathBuf,
    /// Add unknown keys instead of refusing them.
    pub accept_new: bool,
}

/// Timeouts and keepalives.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect and SSH handshake.
    pub connect: Duration,
    /// One command.
    pub command: Duration,
}

/// The result of a remote command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (-1 when the server sent none).
    pub code: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text, trimmed.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Why a command could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    /// The host could not be reached (down, refused, timed out): worth retrying.
    Unreachable(String),
    /// The connection dropped while the command ran: worth retrying.
    Lost(String),
    /// The host key is unknown or changed: never retried.
    HostKey(String),
    /// Login refused: never retried.
    Auth(String),
    /// The command outlived `commandTimeout`: not retried (it may still be running).
    TimedOut(String),
}

impl ExecError {
    /// True when retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, ExecError::Unreachable(_) | ExecError::Lost(_))
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ExecError::Unreachable(m)
            | ExecError::Lost(m)
            | ExecError::HostKey(m)
            | ExecError::Auth(m)
            | ExecError::TimedOut(m) => m,
        }
    }
}

struct Job {
    command: String,
    stdin: Option<Vec<u8>>,
    reply: tokio::sync::oneshot::Sender<Result<Output, ExecError>>,
}

/// A host's connection thread.
pub struct Connection {
    jobs: mpsc::Sender<Job>,
}

impl Connection {
    /// Starts the thread; it connects on the first command.
    pub fn start(endpoint: Endpoint, keys: HostKeys, timeouts: Timeouts) -> Connection {
        let (jobs, queue) = mpsc::channel::<Job>();
        let name = format!("ssh-{}", endpoint.name);
        let spawned = std::thread::Builder::new().name(name).spawn(move || serve(endpoint, keys, timeouts, queue));
        if let Err(e) = spawned {
            tracing::error!("cannot start an SSH thread: {e}");
        }
        Connection { jobs }
    }

    /// Runs `command` through the login shell, with `stdin`.
    pub async fn exec(&self, command: String, stdin: Option<Vec<u8>>) -> Result<Output, ExecError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { command, stdin, reply })
            .map_err(|_| ExecError::Lost("the connection thread stopped".into()))?;
        answer.await.map_err(|_| ExecError::Lost("the connection thread stopped".into()))?
    }
}

fn serve(endpoint: Endpoint, keys: HostKeys, timeouts: Timeouts, queue: mpsc::Receiver<Job>) {
    let mut session: Option<Session> = None;
    // A host that just refused or timed out is not tried again for every queued command:
    // they fail at once with the same error for a few seconds.
    let mut last_failure: Option<(std::time::Instant, ExecError)> = None;
    loop {
        let job = match queue.recv_timeout(Duration::from_secs(15)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(s) = &session
                    && s.keepalive_send().is_err()
                {
                    session = None;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let s = match session.take() {
                Some(s) => s,
                None => {
                    if let Some((when, e)) = &last_failure
                        && when.elapsed() < Duration::from_secs(5)
                    {
                        break Err(e.clone());
                    }
                    match connect(&endpoint, &keys, timeouts) {
                        Ok(s) => {
                            last_failure = None;
                            s
                        }
                        Err(e) => {
                            last_failure = Some((std::time::Instant::now(), e.clone()));
                            break Err(e);
                        }
                    }
                }
            };
            let result = run(&s, &job.command, job.stdin.as_deref(), timeouts);
            session = Some(s);
            match result {
                Ok(output) => break Ok(output),
                // The session was stale (dropped while idle) and nothing ran: reconnect once.
                Err(RunError::BeforeStart(e)) if attempt == 1 => {
                    tracing::debug!(host = %endpoint.name, "reconnecting: {e}");
                    session = None;
                }
                Err(RunError::TimedOut) => {
                    session = None;
                    break Err(ExecError::TimedOut(format!(
                        "the command did not finish within {} s on {} (commandTimeout); it was not retried, as it may still be running",
                        timeouts.command.as_secs(),
                        endpoint.name
                    )));
                }
                Err(RunError::BeforeStart(e)) | Err(RunError::During(e)) => {
                    session = None;
                    break Err(ExecError::Lost(format!("the SSH connection to {} dropped: {e}", endpoint.name)));
                }
            }
        };
        let _ = job.reply.send(result);
    }
}

enum RunError {
    BeforeStart(String),
    During(String),
    TimedOut,
}

impl RunError {
    /// An I/O error while the command runs: a timeout, or a dropped connection.
    fn during(e: std::io::Error) -> RunError {
        if e.kind() == std::io::ErrorKind::TimedOut { RunError::TimedOut } else { RunError::During(e.to_string()) }
    }
}

fn run(session: &Session, command: &str, stdin: Option<&[u8]>, timeouts: Timeouts) -> Result<Output, RunError> {
    session.set_timeout(u32::try_from(timeouts.command.as_millis()).unwrap_or(u32::MAX));
    let mut channel = session.channel_session().map_err(|e| RunError::BeforeStart(e.to_string()))?;
    channel.exec(command).map_err(|e| RunError::BeforeStart(e.to_string()))?;
    if let Some(input) = stdin {
        channel.write_all(input).map_err(RunError::during)?;
    }
    channel.send_eof().map_err(|e| RunError::during(e.into()))?;
    let mut stdout = Vec::new();
    channel.read_to_end(&mut stdout).map_err(RunError::during)?;
    let mut stderr = Vec::new();
    channel.stderr().read_to_end(&mut stderr).map_err(RunError::during)?;
    channel.wait_close().map_err(|e| RunError::during(e.into()))?;
    // A command killed by a signal has no exit status (libssh2 then says 0): it failed.
    if let Some(signal) = channel.exit_signal().ok().and_then(|s| s.exit_signal) {
        stderr.extend_from_slice(format!("\nkilled by signal {signal}").as_bytes());
        return Ok(Output { code: -1, stdout, stderr });
    }
    let code = channel.exit_status().unwrap_or(-1);
    Ok(Output { code, stdout, stderr })
}

/// A stream a session can run over: a TCP connection, or a socket pumped through a bastion.
fn open_stream(endpoint: &Endpoint, keys: &HostKeys, timeouts: Timeouts) -> Result<Box<dyn SessionStream>, ExecError> {
    match &endpoint.via {
        None => {
            let target = format!("{}:{}", endpoint.address, endpoint.port);
            let addresses: Vec<_> = target
                .to_socket_addrs()
                .map_err(|e| ExecError::Unreachable(format!("cannot resolve {} ({target}): {e}", endpoint.name)))?
                .collect();
            let mut last = None;
            for address in addresses {
                match TcpStream::connect_timeout(&address, timeouts.connect) {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(Box::new(stream));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(ExecError::Unreachable(format!(
                "cannot connect to {} ({target}): {}",
                endpoint.name,
                last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
            )))
        }
        Some(bastion) => {
            let jump = connect(bastion, keys, timeouts)?;
            let channel = jump.channel_direct_tcpip(&endpoint.address, endpoint.port, None).map_err(|e| {
                ExecError::Unreachable(format!(
                    "bastion {} cannot reach {} ({}:{}): {e}",
                    bastion.name, endpoint.name, endpoint.address, endpoint.port
                ))
            })?;
            let (ours, theirs) =
                UnixStream::pair().map_err(|e| ExecError::Unreachable(format!("cannot make a socket pair: {e}")))?;
            let name = format!("jump-{}", endpoint.name);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || pump(jump, channel, theirs))
                .map_err(|e| ExecError::Unreachable(format!("cannot start a jump thread: {e}")))?;
            Ok(Box::new(ours))
        }
    }
}

/// What `Session::set_tcp_stream` accepts, boxed.
trait SessionStream: std::os::fd::AsRawFd + Send {}
impl<T: std::os::fd::AsRawFd + Send> SessionStream for T {}

struct BoxedStream(Box<dyn SessionStream>);

impl std::os::fd::AsRawFd for BoxedStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Moves bytes between the local socket and the bastion's channel until either closes.
fn pump(session: Session, mut channel: ssh2::Channel, mut local: UnixStream) {
    session.set_blocking(false);
    if local.set_nonblocking(true).is_err() {
        return;
    }
    let mut buffer = vec![0u8; 64 * 1024];
    // Idle waits grow from 1 ms to 16 ms, so a quiet connection costs little CPU and a
    // busy one little latency.
    let mut idle_rounds = 0u32;
    loop {
        // The socket reads 0 only when our side closed; the channel reads 0 when it has
        // nothing now (its end is `eof()`).
        let up = forward(&mut local, &mut channel, &mut buffer, true);
        let down = forward(&mut channel, &mut local, &mut buffer, false);
        match (up, down) {
            (Flow::Closed, _) | (_, Flow::Closed) => break,
            (Flow::Idle, Flow::Idle) => {
                if channel.eof() {
                    break;
                }
                idle_rounds = (idle_rounds + 1).min(4);
                std::thread::sleep(Duration::from_millis(1 << idle_rounds));
            }
            _ => idle_rounds = 0,
        }
    }
}

enum Flow {
    Moved,
    Idle,
    Closed,
}

/// Moves what `from` has now to `to` (both non-blocking).
fn forward(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8], zero_is_end: bool) -> Flow {
    let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
    let n = match from.read(buffer) {
        Ok(0) if zero_is_end => return Flow::Closed,
        Ok(0) => return Flow::Idle,
        Ok(n) => n,
        Err(e) if would_block(&e) => return Flow::Idle,
        Err(_) => return Flow::Closed,
    };
    let mut sent = 0;
    while sent < n {
        match to.write(&buffer[sent..n]) {
            Ok(m) => sent += m,
            Err(e) if would_block(&e) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return Flow::Closed,
        }
    }
    Flow::Moved
}

/// Connects, checks the host key, logs in.
pub fn connect(endpoint: &Endpoint, keys: &HostKeys, timeouts: Timeouts) -> Result<Session, ExecError> {
    let stream = open_stream(endpoint, keys, timeouts)?;
    let mut session = Session::new().map_err(|e| ExecError::Unreachable(format!("cannot make an SSH session: {e}")))?;
    session.set_tcp_stream(BoxedStream(stream));
    session.set_timeout(u32::try_from(timeouts.connect.as_millis()).unwrap_or(u32::MAX));
    session
        .handshake()
        .map_err(|e| ExecError::Unreachable(format!("SSH handshake with {} failed: {e}", endpoint.name)))?;
    check_host_key(&session, endpoint, keys)?;
    let user = endpoint.user.as_str();
    match &endpoint.identity_file {
        Some(key) => session
            .userauth_pubkey_file(user, None, key, None)
            .map_err(|e| ExecError::Auth(format!("{user}@{} refused the key {}: {e}", endpoint.name, key.display())))?,
        None => session.userauth_agent(user).map_err(|e| {
            ExecError::Auth(format!("{user}@{} refused every key of the ssh-agent: {e}", endpoint.name))
        })?,
    }
    session.set_keepalive(true, 15);
    Ok(session)
}

/// `SHA256:...` of a key blob, as OpenSSH prints it.
pub fn fingerprint(key: &[u8]) -> String {
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(key)))
}

fn known_hosts_name(address: &str, port: u16) -> String {
    if port == 22 { address.to_string() } else { format!("[{address}]:{port}") }
}

fn check_host_key(session: &Session, endpoint: &Endpoint, keys: &HostKeys) -> Result<(), ExecError> {
    let Some((key, key_type)) = session.host_key() else {
        return Err(ExecError::HostKey(format!("{} sent no host key", endpoint.name)));
    };
    let presented = fingerprint(key);
    let mut known = session.known_hosts().map_err(|e| ExecError::HostKey(e.to_string()))?;
    if keys.known_hosts.exists() {
        known.read_file(&keys.known_hosts, KnownHostFileKind::OpenSSH).map_err(|e| {
            ExecError::HostKey(format!("cannot read known hosts `{}`: {e}", keys.known_hosts.display()))
        })?;
    }
    match known.check_port(&endpoint.address, endpoint.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => {
            let name = known_hosts_name(&endpoint.address, endpoint.port);
            let recorded: Vec<String> = known
                .iter()
                .unwrap_or_default()
                .iter()
                .filter(|h| h.name() == Some(name.as_str()))
                .filter_map(|h| base64::engine::general_purpose::STANDARD.decode(h.key()).ok())
                .map(|blob| fingerprint(&blob))
                .collect();
            Err(ExecError::HostKey(format!(
                "the host key of {} ({name}) changed: it presented {presented}, but `{}` records {}; refusing to connect (this may be an attack, or the host was reinstalled)",
                endpoint.name,
                keys.known_hosts.display(),
                if recorded.is_empty() { "another key".to_string() } else { recorded.join(", ") }
            )))
        }
        CheckResult::NotFound if keys.accept_new => {
            // Hosts connect in parallel: one writer at a time, each re-reading the file, so
            // no new key overwrites another.
            static KNOWN_HOSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _guard = KNOWN_HOSTS.lock().unwrap_or_else(|e| e.into_inner());
            let mut known = session.known_hosts().map_err(|e| ExecError::HostKey(e.to_string()))?;
            if keys.known_hosts.exists() {
                let _ = known.read_file(&keys.known_hosts, KnownHostFileKind::OpenSSH);
            }
            let name = known_hosts_name(&endpoint.address, endpoint.port);
            known
                .add(&name, key, &format!("added by strata for {}", endpoint.name), key_type.into())
                .and_then(|_| {
                    if let Some(dir) = keys.known_hosts.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    known.write_file(&keys.known_hosts, KnownHostFileKind::OpenSSH)
                })
                .map_err(|e| ExecError::HostKey(format!("cannot record the host key of {}: {e}", endpoint.name)))?;
            tracing::info!(host = %endpoint.name, %presented, "accepted a new host key");
            Ok(())
        }
        CheckResult::NotFound => Err(ExecError::HostKey(format!(
            "the host key of {} ({}:{}) is not in `{}` (it presented {presented}); refusing to connect to an unknown host",
            endpoint.name,
            endpoint.address,
            endpoint.port,
            keys.known_hosts.display()
        ))),
        CheckResult::Failure => Err(ExecError::HostKey(format!("cannot check the host key of {}", endpoint.name))),
    }
}

/// `~` at the start of a path is the home folder.
pub fn expand_home(path: &str, base: &Path) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = PathBuf::from(path);
    if p.is_absolute() { p } else { base.join(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_look_like_openssh() {
        assert_eq!(fingerprint(b""), "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU");
        assert_eq!(known_hosts_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_name("10.0.0.1", 2222), "[10.0.0.1]:2222");
    }
}
