//! The local driver's sandbox: each agent runs under bubblewrap (`bwrap`)
//! in its own user, mount, PID, IPC, UTS and (by default) network
//! namespaces, with no capabilities.
//!
//! Inside, the agent sees its workspace read-write, a private `/tmp` and
//! home (folders of its own run directory, so they count against the
//! workspace budget and are on disk, not in memory), the prompt file
//! read-only, a folder for its usage report, and a read-only view of the
//! system (`/usr`, `/bin`, `/lib*`, the few files of `/etc` programs need,
//! and what the operator adds with `HADRON_SANDBOX_READ_ONLY`). It sees
//! nothing of Hadron: not its data dir, store, control repo, other runs,
//! process or files. The PID namespace ends with the agent: when it exits,
//! every process it left behind is killed by the kernel, however it
//! detached.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::spec::WorkerNetwork;

/// The program the sandbox is built with, when not found on `PATH`
/// (`HADRON_BWRAP` names another).
pub const BWRAP_ENV: &str = "HADRON_BWRAP";
/// Colon-separated extra paths the agent may read (toolchains, an agent
/// CLI installed outside `/usr`), set by the operator in Hadron's environment.
pub const READ_ONLY_ENV: &str = "HADRON_SANDBOX_READ_ONLY";
/// Colon-separated folders every agent may read and write, set by the
/// operator (a package cache shared by all agents, say). Each is a hole in
/// the sandbox: agents can leave things there for each other.
pub const SHARED_ENV: &str = "HADRON_SANDBOX_SHARED";
/// `off` in Hadron's environment runs agents unconfined on purpose (the
/// dashboard and status still say so); for machines where the sandbox
/// cannot run and the operator has accepted it.
pub const SANDBOX_ENV: &str = "HADRON_SANDBOX";

/// The value of `HADRON_SANDBOX` a Kubernetes worker pod carries: the pod
/// is the sandbox (restricted Pod Security, its own NetworkPolicy).
pub const SANDBOX_POD: &str = "pod";

/// System folders shown read-only when they exist.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt"];
/// Files and folders of `/etc` that programs need (libraries, users, TLS
/// roots, name resolution, time zone, alternatives); not `/etc` whole.
const ETC_ENTRIES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/mime.types",
    "/etc/gitconfig",
];
/// Name resolution files, shown only to an agent with the host's network.
const ETC_NETWORK: &[&str] = &["/etc/resolv.conf", "/etc/host.conf", "/etc/gai.conf"];

/// Why agents cannot be confined on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxUnavailable {
    /// No `bwrap` on `PATH` (or at `HADRON_BWRAP`).
    #[error(
        "bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install bubblewrap`) or name it in HADRON_BWRAP"
    )]
    NotInstalled,
    /// `bwrap` is there but cannot make the namespaces (user namespaces
    /// disabled, a container without the privilege, an AppArmor rule).
    #[error(
        "bubblewrap cannot create namespaces here: {0}; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or the AppArmor profile for bwrap) or run Hadron where they are allowed"
    )]
    Refused(String),
    /// The operator turned the sandbox off (`HADRON_SANDBOX=off`).
    #[error("the operator turned the sandbox off (HADRON_SANDBOX=off)")]
    TurnedOff,
}

impl SandboxUnavailable {
    /// Stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SandboxUnavailable::NotInstalled => "SandboxNotInstalled",
            SandboxUnavailable::Refused(_) => "SandboxRefused",
            SandboxUnavailable::TurnedOff => "SandboxTurnedOff",
        }
    }
}

/// The sandbox program, once found and tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    bwrap: PathBuf,
}

/// What one agent's sandbox shows it.
#[derive(Debug, Clone)]
pub struct SandboxLayout<'a> {
    /// The workspace, read-write, at the same path inside.
    pub workspace: &'a Path,
    /// The prompt file, read-only, at the same path inside.
    pub prompt: &'a Path,
    /// A folder for the agent's usage report, read-write, same path.
    pub report_dir: &'a Path,
    /// The agent's private `/tmp` (its home is `/tmp/home`).
    pub tmp: &'a Path,
    /// The network it may use.
    pub network: &'a WorkerNetwork,
    /// Unix socket of the worker's egress proxy, shown inside at
    /// [`PROXY_SOCKET_INSIDE`], when the network is an allow list.
    pub proxy_socket: Option<&'a Path>,
    /// The program the agent runs, when it lives outside the system
    /// folders (shown read-only at its own path).
    pub program: Option<&'a Path>,
    /// Hadron's own binary, shown read-only at [`RELAY_INSIDE`] to run the
    /// loopback relay to the proxy, when the network is an allow list.
    pub relay: Option<&'a Path>,
    /// A home that persists across the attempts of a stage (an agent that
    /// resumes sessions), shown read-write as its home `/tmp/home`; without
    /// it the home is the private `/tmp`'s. With it the workspace is also
    /// shown at [`STABLE_WORKSPACE_INSIDE`] and the agent starts there: a
    /// CLI that files its sessions by working directory (Claude Code) finds
    /// the session of an earlier attempt, whose workspace had another path.
    pub home: Option<&'a Path>,
}

/// Where the workspace is shown too, and the agent starts, when it has a
/// persistent home: the same path for every attempt of a stage.
pub const STABLE_WORKSPACE_INSIDE: &str = "/workspace";

/// Where the proxy's socket is inside the sandbox.
pub const PROXY_SOCKET_INSIDE: &str = "/run/hadron/proxy.sock";
/// Where Hadron's binary (the relay) is inside the sandbox.
pub const RELAY_INSIDE: &str = "/run/hadron/hadron";

static PROBED: OnceLock<Result<Sandbox, SandboxUnavailable>> = OnceLock::new();

impl Sandbox {
    /// Finds `bwrap` and checks that it can build a sandbox here; the
    /// answer is kept for the life of the process.
    pub fn probe() -> Result<Sandbox, SandboxUnavailable> {
        PROBED.get_or_init(Self::probe_now).clone()
    }

    fn probe_now() -> Result<Sandbox, SandboxUnavailable> {
        if std::env::var(SANDBOX_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
            return Err(SandboxUnavailable::TurnedOff);
        }
        let bwrap = match std::env::var_os(BWRAP_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => find_on_path("bwrap").ok_or(SandboxUnavailable::NotInstalled)?,
        };
        let truth = ["/usr/bin/true", "/bin/true"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("/usr/bin/true");
        let mut cmd = Command::new(&bwrap);
        cmd.args(["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--disable-userns"]);
        for dir in SYSTEM_DIRS.iter().filter(|d| Path::new(d).exists()) {
            cmd.args(["--ro-bind", dir, dir]);
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev", "--", truth]);
        let out = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output();
        match out {
            Ok(out) if out.status.success() => Ok(Sandbox { bwrap }),
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.trim();
                Err(SandboxUnavailable::Refused(if said.is_empty() {
                    format!("bwrap {}", out.status)
                } else {
                    said.chars().take(300).collect()
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SandboxUnavailable::NotInstalled),
            Err(e) => Err(SandboxUnavailable::Refused(e.to_string())),
        }
    }

    /// The command that runs `argv` confined as `layout` says: `bwrap`,
    /// its arguments, then the agent's (behind the relay when the network
    /// is an allow list).
    pub fn command(&self, layout: &SandboxLayout<'_>, argv: &[String]) -> (PathBuf, Vec<OsString>) {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| args.extend(items.iter().map(|a| a.as_ref().to_owned()));
        push(&[&"--unshare-all", &"--unshare-user", &"--die-with-parent", &"--new-session", &"--cap-drop", &"ALL", &"--disable-userns"]);
        push(&[&"--hostname", &"hadron-agent"]);
        if matches!(layout.network, WorkerNetwork::Host) {
            push(&[&"--share-net"]);
        }
        for dir in SYSTEM_DIRS.iter().filter(|d| Path::new(d).exists()) {
            push(&[&"--ro-bind", dir, dir]);
        }
        let etc_network: &[&str] = if matches!(layout.network, WorkerNetwork::Host) { ETC_NETWORK } else { &[] };
        for entry in ETC_ENTRIES.iter().chain(etc_network).filter(|e| Path::new(e).exists()) {
            push(&[&"--ro-bind", entry, entry]);
        }
        // The private /tmp first: anything shown below /tmp (a workspace,
        // a shared folder) is mounted on top of it, not hidden by it.
        push(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
        push(&[&"--bind", &layout.tmp, &"/tmp"]);
        if let Some(home) = layout.home {
            push(&[&"--bind", &home, &"/tmp/home"]);
        }
        for extra in std::env::var(READ_ONLY_ENV).unwrap_or_default().split(':').filter(|p| p.starts_with('/')) {
            push(&[&"--ro-bind-try", &extra, &extra]);
        }
        for shared in std::env::var(SHARED_ENV).unwrap_or_default().split(':').filter(|p| p.starts_with('/')) {
            push(&[&"--bind-try", &shared, &shared]);
        }
        if let Some(program) = layout.program {
            push(&[&"--ro-bind", &program, &program]);
        }
        push(&[&"--bind", &layout.workspace, &layout.workspace]);
        push(&[&"--ro-bind", &layout.prompt, &layout.prompt]);
        push(&[&"--bind", &layout.report_dir, &layout.report_dir]);
        push(&[&"--setenv", &"HOME", &"/tmp/home", &"--setenv", &"TMPDIR", &"/tmp"]);
        match layout.home {
            Some(_) => push(&[&"--bind", &layout.workspace, &STABLE_WORKSPACE_INSIDE, &"--chdir", &STABLE_WORKSPACE_INSIDE]),
            None => push(&[&"--chdir", &layout.workspace]),
        }
        let relayed = match (layout.network, layout.proxy_socket, layout.relay) {
            (WorkerNetwork::Allow(_), Some(socket), Some(relay)) => {
                push(&[&"--ro-bind", &socket, &PROXY_SOCKET_INSIDE, &"--ro-bind", &relay, &RELAY_INSIDE]);
                for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
                    push(&[&"--setenv", &var, &PROXY_URL_INSIDE]);
                }
                push(&[&"--setenv", &"NO_PROXY", &"", &"--setenv", &"no_proxy", &""]);
                true
            }
            _ => false,
        };
        args.push("--".into());
        if relayed {
            args.extend(
                [RELAY_INSIDE, "sandbox-relay", "--socket", PROXY_SOCKET_INSIDE, "--listen", PROXY_LISTEN_INSIDE, "--"].map(OsString::from),
            );
        }
        args.extend(argv.iter().map(OsString::from));
        (self.bwrap.clone(), args)
    }
}

/// The address the relay listens on inside the sandbox.
pub const PROXY_LISTEN_INSIDE: &str = "127.0.0.1:3128";
/// The proxy URL agents are given inside the sandbox.
pub const PROXY_URL_INSIDE: &str = "http://127.0.0.1:3128";

/// The first executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `path` lies in a folder the sandbox shows anyway.
pub fn is_system_path(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
}

/// The program of `argv[0]` as the sandbox must show it: `None` when it is
/// found in the system folders (or not at all: the agent then fails to
/// start with the sandbox's own message), else its canonical path.
pub fn program_outside_system(program: &str) -> Option<PathBuf> {
    let found = if program.contains('/') { Some(PathBuf::from(program)) } else { find_on_path(program) }?;
    let real = std::fs::canonicalize(&found).ok()?;
    if is_system_path(&found) && is_system_path(&real) {
        return None;
    }
    Some(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout<'a>(network: &'a WorkerNetwork, dir: &'a Path) -> SandboxLayout<'a> {
        SandboxLayout {
            workspace: dir,
            prompt: dir,
            report_dir: dir,
            tmp: dir,
            network,
            proxy_socket: Some(dir),
            program: None,
            relay: Some(dir),
            home: None,
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn no_network_unless_asked_and_the_relay_only_for_an_allow_list() {
        let sandbox = Sandbox { bwrap: PathBuf::from("/usr/bin/bwrap") };
        let dir = Path::new("/runs/w");
        let argv = vec!["sh".to_owned(), "-c".to_owned(), "true".to_owned()];
        let none = strings(&sandbox.command(&layout(&WorkerNetwork::None, dir), &argv).1);
        assert!(none.contains(&"--unshare-all".to_owned()) && !none.contains(&"--share-net".to_owned()), "{none:?}");
        assert!(!none.iter().any(|a| a.contains("resolv.conf")), "no name resolution without a network");
        assert!(!none.contains(&RELAY_INSIDE.to_owned()));
        assert_eq!(&none[none.len() - 4..], ["--", "sh", "-c", "true"]);
        let host = strings(&sandbox.command(&layout(&WorkerNetwork::Host, dir), &argv).1);
        assert!(host.contains(&"--share-net".to_owned()));
        let allow = WorkerNetwork::Allow(vec!["api.example.com:443".into()]);
        let allowed = strings(&sandbox.command(&layout(&allow, dir), &argv).1);
        assert!(!allowed.contains(&"--share-net".to_owned()), "an allow list still has no network of its own");
        let dashes = allowed.iter().position(|a| a == "--").expect("the separator");
        assert_eq!(allowed[dashes + 1], RELAY_INSIDE);
        assert!(allowed.contains(&PROXY_URL_INSIDE.to_owned()));
        for must in ["--cap-drop", "--die-with-parent", "--new-session", "--disable-userns"] {
            assert!(allowed.contains(&must.to_owned()), "{must}");
        }
        // What is shown below /tmp is mounted after the private /tmp, or it would be hidden.
        let program = Path::new("/tmp/tools/agent");
        let with_program = SandboxLayout { program: Some(program), ..layout(&WorkerNetwork::None, dir) };
        let args = strings(&sandbox.command(&with_program, &argv).1);
        let tmp = args.windows(2).position(|w| w[1] == "/tmp").expect("the private /tmp");
        let shown = args.iter().position(|a| a == "/tmp/tools/agent").expect("the program");
        assert!(tmp < shown, "{args:?}");
        assert!(!args.windows(3).any(|w| w[0] == "--bind" && w[2] == "/tmp/home"), "no persistent home unless given one: {args:?}");
        // A persistent home is shown as the agent's home, over the private /tmp.
        let home = Path::new("/runs/.agent-homes/h");
        let with_home = SandboxLayout { home: Some(home), ..layout(&WorkerNetwork::None, dir) };
        let args = strings(&sandbox.command(&with_home, &argv).1);
        let bound = args.windows(3).position(|w| w[0] == "--bind" && w[1] == "/runs/.agent-homes/h" && w[2] == "/tmp/home");
        assert!(bound.is_some_and(|at| at > tmp), "{args:?}");
        let chdir = args.windows(2).find(|w| w[0] == "--chdir").expect("a working directory");
        assert_eq!(chdir[1], STABLE_WORKSPACE_INSIDE, "the same working directory for every attempt: {args:?}");
        assert!(args.windows(3).any(|w| w[0] == "--bind" && w[1] == "/runs/w" && w[2] == STABLE_WORKSPACE_INSIDE), "{args:?}");
    }

    #[test]
    fn programs_in_system_folders_need_no_mount() {
        assert_eq!(program_outside_system("sh"), None, "sh is in /usr/bin or /bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let real = std::fs::canonicalize(&script).expect("canonical");
        assert_eq!(program_outside_system(&script.display().to_string()), Some(real));
    }
}
