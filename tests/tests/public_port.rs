//! The public port cannot be held shut: against a live `hadron up` on the
//! example, 500 event-stream clients (reconnecting when refused) and a
//! slowloris of 300 sockets that send their headers a line a second (and
//! reconnect when closed) run from loopback for 15 s, while `/healthz` on the
//! probe listener and the dashboard's index page on the public port are asked
//! every half second. Every probe answers 200 within its timeout, and all but
//! at most one dashboard request do. (Before the probe listener and the
//! per-peer limits, 500 streams made 10 of 10 probes fail.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hadron_tests::{Live, copy_tree, hadron_bin, http_get, workspace_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS: usize = 500;
const SLOWLORIS: usize = 300;
const ATTACK: Duration = Duration::from_secs(15);

/// The soft limit of open files of this process (children inherit it).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?.to_owned();
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

#[derive(Default)]
struct Tally {
    streams_open: AtomicUsize,
    streams_refused_429: AtomicUsize,
    streams_refused_other: AtomicUsize,
    slowloris_connections: AtomicUsize,
}

/// Reads a response head (up to the blank line), or None when the connection ends first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(1) => head.push(buf[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One event-stream client: opens a stream and holds it; refused, tries again a second later.
async fn stream_client(addr: String, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if stream.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await.is_err() {
            continue;
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read_head(&mut stream)).await {
            Ok(Some(head)) if head.starts_with("HTTP/1.1 200") => {
                tally.streams_open.fetch_add(1, Ordering::Relaxed);
                // Hold it: read keep-alive comments until the attack ends.
                let mut sink = [0u8; 1024];
                let left = until.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
            }
            Ok(Some(head)) if head.starts_with("HTTP/1.1 429") => {
                tally.streams_refused_429.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(_) => {
                tally.streams_refused_other.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return,
        }
    }
}

/// One slowloris socket: a request line, then a header line a second, never
/// the blank line; reconnects when the server closes it.
async fn slowloris(addr: String, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tally.slowloris_connections.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
            continue;
        }
        let mut buf = [0u8; 256];
        while Instant::now() < until {
            // Closed (or answered) by the server: read returns.
            if let Ok(result) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                let _ = result;
                break;
            }
            if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    }
}

/// `GET path` with a deadline: whether it was answered 200 in time.
async fn answers(addr: &str, path: &str, limit: Duration) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut text = Vec::new();
        stream.read_to_end(&mut text).await.ok()?;
        Some(text.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(limit, ask).await, Ok(Some(true)))
}

fn start(cwd: &Path) -> Live {
    Live::start(
        hadron_bin!(),
        cwd,
        &["up", "example-repo", "--poll-seconds", "1", "--backoff-ms", "200", "--listen", "127.0.0.1:0", "--probe-listen", "127.0.0.1:0"],
    )
}

#[test]
fn event_streams_and_a_slowloris_cannot_starve_probes_or_the_dashboard() {
    let tmp = tempfile::tempdir().expect("temp dir");
    copy_tree(&workspace_root().join("example-repo"), &tmp.path().join("example-repo")).expect("copy the example");
    let live = start(tmp.path());
    let addr = live.address();
    let probe_line = live.wait_for_line(&["probes: http://"], "the probe address is printed");
    let probe = probe_line.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("because the line names an address").to_owned();
    assert_eq!(http_get(&probe, "/healthz").0, 200, "the probe listener answers\n{}", live.logs());
    assert_eq!(http_get(&addr, "/").0, 200, "the dashboard answers\n{}", live.logs());

    // Both sides' sockets (this process's and Hadron's) within the open-files limit.
    let limit = open_files_limit();
    let budget = limit.saturating_sub(300) / 2;
    let (streams, slow) = if budget >= STREAMS + SLOWLORIS {
        (STREAMS, SLOWLORIS)
    } else {
        println!("open-files limit {limit}: fewer sockets than {STREAMS} + {SLOWLORIS} (raise `ulimit -n` to 2000 for the full test)");
        (budget * 5 / 8, budget * 3 / 8)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("because tokio starts");
    let tally = Arc::new(Tally::default());
    let (probes, dashboards) = runtime.block_on(async {
        let until = Instant::now() + ATTACK;
        let mut tasks = Vec::new();
        for _ in 0..streams {
            tasks.push(tokio::spawn(stream_client(addr.clone(), until, tally.clone())));
        }
        for _ in 0..slow {
            tasks.push(tokio::spawn(slowloris(addr.clone(), until, tally.clone())));
        }
        // Let the crowd gather, then ask every half second while it holds on.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mut probes, mut dashboards) = (Vec::new(), Vec::new());
        while Instant::now() + Duration::from_secs(3) < until {
            let (probe_ok, page_ok) =
                tokio::join!(answers(&probe, "/healthz", Duration::from_secs(3)), answers(&addr, "/", Duration::from_secs(5)));
            probes.push(probe_ok);
            dashboards.push(page_ok);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for task in tasks {
            let _ = task.await;
        }
        (probes, dashboards)
    });
    let count = |v: &[bool]| v.iter().filter(|ok| **ok).count();
    let opened = tally.streams_open.load(Ordering::Relaxed);
    let refused = tally.streams_refused_429.load(Ordering::Relaxed);
    let other = tally.streams_refused_other.load(Ordering::Relaxed);
    let slow_connections = tally.slowloris_connections.load(Ordering::Relaxed);
    println!(
        "{streams} stream clients: {opened} streams served, {refused} refused 429, {other} other answers; {slow} slowloris sockets: {slow_connections} connections; \
         probes {}/{} answered, dashboard {}/{}",
        count(&probes),
        probes.len(),
        count(&dashboards),
        dashboards.len()
    );
    // The attack was real: the per-peer stream limit refused, and the slowloris connected.
    assert!(opened >= 1 && refused > 0, "the stream clients did not meet the stream limit\n{}", live.logs());
    assert!(slow_connections >= slow, "the slowloris did not connect\n{}", live.logs());
    assert!(probes.len() >= 5, "too few probes were asked: {}", probes.len());
    assert_eq!(count(&probes), probes.len(), "probes failed while the public port was under attack: {probes:?}\n{}", live.logs());
    assert!(
        count(&dashboards) + 1 >= dashboards.len(),
        "the dashboard did not answer while the public port was under attack: {dashboards:?}\n{}",
        live.logs()
    );
    // And once the crowd is gone, everything answers on the public port too.
    assert_eq!(http_get(&addr, "/healthz").0, 200, "{}", live.logs());
}
