//! An agent's way out when its network is an allow list: the worker (outside
//! the sandbox) serves an HTTP `CONNECT` proxy on a Unix socket that lets
//! through exactly the declared `host:port` pairs and logs what it refuses;
//! inside the sandbox, which has no network of its own, `hadron
//! sandbox-relay` listens on `127.0.0.1:3128` and carries each connection to
//! that socket. Agents find the proxy in `HTTPS_PROXY`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of a request head the proxy reads.
const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy tries to reach an allowed endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the proxy and the relay.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The socket or listener could not be made.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The agent program could not be started by the relay.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl EgressError {
    /// Stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::Listen { .. } => "EgressListenFailed",
            EgressError::Spawn { .. } => "AgentSpawnFailed",
        }
    }
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A DNS name (lower case) and port.
    Name(String, u16),
    /// An IPv4 network and port.
    Net(Ipv4Addr, u8, u16),
}

/// The allow list, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList(Vec<Allowed>);

impl AllowList {
    /// Parses `host:port` entries (DNS name, IPv4 address or IPv4 CIDR);
    /// entries that do not parse allow nothing (validate refuses them).
    pub fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, u16)>) -> AllowList {
        let mut out = Vec::new();
        for (host, port) in endpoints {
            if let Some((ip, bits)) = host.split_once('/') {
                if let (Ok(ip), Ok(bits)) = (ip.parse::<Ipv4Addr>(), bits.parse::<u8>())
                    && bits <= 32
                {
                    out.push(Allowed::Net(ip, bits, port));
                }
            } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
                out.push(Allowed::Net(ip, 32, port));
            } else {
                out.push(Allowed::Name(host.to_ascii_lowercase(), port));
            }
        }
        AllowList(out)
    }

    /// Whether `host:port` (as a client asked for it) is allowed. A name
    /// matches only the same name; an address matches only a listed
    /// address or network (a name is not resolved to match a network).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.0.iter().any(|a| match (a, ip) {
            (Allowed::Name(name, p), None) => *p == port && *name == host,
            (Allowed::Net(net, bits, p), Some(IpAddr::V4(ip))) => *p == port && in_network(ip, *net, *bits),
            _ => false,
        })
    }
}

fn in_network(ip: Ipv4Addr, net: Ipv4Addr, bits: u8) -> bool {
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// What the proxy tells the worker: each connection it refused or let through.
pub type EgressLog = Arc<dyn Fn(&str) + Send + Sync>;

/// Serves the proxy on a Unix socket at `socket` until the process ends
/// (one thread; a thread per connection). Returns once it listens.
pub fn serve_proxy(socket: &Path, allow: AllowList, log: EgressLog) -> Result<(), EgressError> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|source| EgressError::Listen { what: socket.display().to_string(), source })?;
    let allow = Arc::new(allow);
    std::thread::Builder::new()
        .name("egress-proxy".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let allow = allow.clone();
                let log = log.clone();
                let _ = std::thread::Builder::new().name("egress-conn".into()).spawn(move || handle(conn, &allow, &log));
            }
        })
        .map_err(|source| EgressError::Listen { what: socket.display().to_string(), source })?;
    Ok(())
}

/// Reads a request head (up to a blank line) from `conn`, at most [`MAX_HEAD`] bytes.
fn read_head(conn: &UnixStream) -> Option<(String, Vec<u8>)> {
    let _ = conn.set_read_timeout(Some(HEAD_TIMEOUT));
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = (&mut reader).take((MAX_HEAD - head.len().min(MAX_HEAD)) as u64).read_line(&mut line).ok()?;
        if n == 0 || head.len() + n >= MAX_HEAD {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let _ = conn.set_read_timeout(None);
    // Bytes the client sent after the head (a TLS hello sent eagerly).
    let early = reader.buffer().to_vec();
    Some((head, early))
}

fn handle(mut conn: UnixStream, allow: &AllowList, log: &EgressLog) {
    let Some((head, early)) = read_head(&conn) else {
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let first = head.lines().next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let inert: String = target.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect();
    if method != "CONNECT" {
        log(&format!(
            "network: refused {} {inert}: the proxy carries only CONNECT (https); plain http is not let out",
            method.chars().take(16).collect::<String>()
        ));
        let _ = conn.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let allowed = target.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))).filter(|(h, p)| allow.allows(h, *p));
    let Some((host, port)) = allowed else {
        log(&format!("network: refused CONNECT {inert}: not in the agent's spec.network.allow"));
        let _ = conn.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let upstream = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find_map(|a| TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).ok()));
    let Some(mut upstream) = upstream else {
        log(&format!("network: CONNECT {inert} allowed but unreachable"));
        let _ = conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    log(&format!("network: CONNECT {inert} let through"));
    if conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() || upstream.write_all(&early).is_err() {
        return;
    }
    let (Ok(conn2), Ok(upstream2)) = (conn.try_clone(), upstream.try_clone()) else { return };
    splice(conn, upstream, conn2, upstream2);
}

/// Copies both ways until either side closes.
fn splice<A, B>(mut a_read: A, mut b_write: B, mut a_write: A, mut b_read: B)
where
    A: Read + Write + Send + 'static + Shutdown,
    B: Read + Write + Send + 'static + Shutdown,
{
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a_read, &mut b_write);
        b_write.shut_write();
    });
    let _ = std::io::copy(&mut b_read, &mut a_write);
    a_write.shut_write();
    let _ = up.join();
}

/// Half-closing a stream.
trait Shutdown {
    fn shut_write(&mut self);
}

impl Shutdown for UnixStream {
    fn shut_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Shutdown for TcpStream {
    fn shut_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// `hadron sandbox-relay`: inside the sandbox, listens on `listen` and
/// carries each connection to the proxy's Unix `socket`, while it runs
/// `argv` with the same standard streams; exits with the agent's status.
pub fn relay_and_run(socket: &Path, listen: &str, argv: &[String]) -> Result<i32, EgressError> {
    let listener = TcpListener::bind(listen).map_err(|source| EgressError::Listen { what: listen.to_owned(), source })?;
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let Ok(up) = UnixStream::connect(&socket) else { return };
                let (Ok(conn2), Ok(up2)) = (conn.try_clone(), up.try_clone()) else { return };
                splice(conn, up, conn2, up2);
            });
        }
    });
    let program = argv.first().cloned().unwrap_or_default();
    let status = std::process::Command::new(&program)
        .args(argv.iter().skip(1))
        .status()
        .map_err(|source| EgressError::Spawn { program: program.clone(), source })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_names_and_addresses_match_networks() {
        let allow = AllowList::new([("api.anthropic.com", 443), ("10.1.0.0/16", 5432), ("192.0.2.7", 80)]);
        assert!(allow.allows("api.anthropic.com", 443));
        assert!(allow.allows("API.Anthropic.com.", 443), "case and a trailing dot do not matter");
        assert!(!allow.allows("api.anthropic.com", 80), "the port is part of the rule");
        assert!(!allow.allows("evil.anthropic.com", 443));
        assert!(!allow.allows("api.anthropic.com.evil.example", 443));
        assert!(allow.allows("10.1.200.3", 5432));
        assert!(!allow.allows("10.2.0.1", 5432));
        assert!(allow.allows("192.0.2.7", 80));
        assert!(!allow.allows("192.0.2.8", 80));
        assert!(!allow.allows("[::1]", 443));
        assert!(!AllowList::default().allows("localhost", 80), "an empty list allows nothing");
    }

    #[test]
    fn the_proxy_lets_through_only_what_is_allowed_and_says_what_it_refused() {
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = upstream.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut c in upstream.incoming().flatten() {
                let mut buf = [0u8; 4];
                let _ = c.read_exact(&mut buf);
                let _ = c.write_all(b"pong");
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("proxy.sock");
        let said = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let said2 = said.clone();
        let log: EgressLog = Arc::new(move |line: &str| said2.lock().expect("lock").push(line.to_owned()));
        serve_proxy(&socket, AllowList::new([("127.0.0.1", port)]), log).expect("serve");

        let mut ok = UnixStream::connect(&socket).expect("connect");
        write!(ok, "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nping").expect("write");
        let mut reply = vec![0u8; 39 + 4];
        ok.read_exact(&mut reply).expect("read");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("pong"), "{reply}");

        let mut refused = UnixStream::connect(&socket).expect("connect");
        write!(refused, "CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", port.wrapping_add(1)).expect("write");
        let mut answer = String::new();
        refused.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        let mut plain = UnixStream::connect(&socket).expect("connect");
        write!(plain, "GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n").expect("write");
        let mut answer = String::new();
        plain.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

        let said = said.lock().expect("lock").clone();
        assert!(said.iter().any(|l| l.contains("refused CONNECT 127.0.0.1") && l.contains("spec.network.allow")), "{said:?}");
        assert!(said.iter().any(|l| l.contains("let through")), "{said:?}");
    }
}
