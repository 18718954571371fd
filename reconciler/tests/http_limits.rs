//! The HTTP server over real loopback TCP: idle, half-sent and slow clients
//! are cut off by the header and body timeouts; at the connection limit the
//! oldest idle connection makes room, and only when all are busy is a new
//! one refused (503 / 429 at once); event streams beyond their limits are
//! refused (429 / 503), so no client can hold the server shut.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hadron::server::{ControlRepoId, Limits, ServerConfig, ServerState, WebhookSecret};
use hadron::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

struct Server {
    _dir: tempfile::TempDir,
    addr: String,
    _triggers: mpsc::Receiver<hadron::server::Trigger>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), hadron::server::ServerError>>,
}

async fn start(limits: Limits) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_data_dir(dir.path()).await?;
    let (tx, triggers) = mpsc::channel(8);
    let mut config = ServerConfig::new(store, ControlRepoId::new("acme/control", "main"), tx);
    config.webhook_secret = Some(WebhookSecret::new("s3cret")?);
    config.limits = limits;
    let listener = hadron::server::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?.to_string();
    let (shutdown, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(hadron::server::serve_listener(listener, ServerState::new(config), async move {
        let _ = rx.await;
    }));
    Ok(Server { _dir: dir, addr, _triggers: triggers, shutdown: Some(shutdown), task })
}

fn short() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        max_connections: 3,
        max_connections_per_peer: 3,
        ..Limits::default()
    }
}

/// Reads until the server closes the connection (or 20 s pass); returns what it sent and how long it took.
async fn until_closed(stream: &mut TcpStream) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await;
    ensure!(read.is_ok(), "the server kept the connection open for 20 s");
    Ok((String::from_utf8_lossy(&got).into_owned(), started.elapsed()))
}

#[tokio::test]
async fn idle_and_half_sent_requests_are_cut_off() -> Result<()> {
    let server = start(short()).await?;
    // Connects and says nothing.
    let mut idle = TcpStream::connect(&server.addr).await?;
    // Starts a request line and stops.
    let mut partial_line = TcpStream::connect(&server.addr).await?;
    partial_line.write_all(b"POST /hooks/gi").await?;
    // Sends part of the headers.
    let mut partial_headers = TcpStream::connect(&server.addr).await?;
    partial_headers.write_all(b"POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nX-Gitea-Event: push\r\n").await?;
    for (what, stream) in [("idle", &mut idle), ("partial request line", &mut partial_line), ("partial headers", &mut partial_headers)] {
        let (_, took) = until_closed(stream).await?;
        println!("{what}: closed after {took:?} (header timeout 1 s)");
    }
    Ok(())
}

#[tokio::test]
async fn a_body_that_stops_coming_is_answered_408() -> Result<()> {
    let server = start(short()).await?;
    let mut slow = TcpStream::connect(&server.addr).await?;
    slow.write_all(
        b"POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Gitea-Event: push\r\nX-Gitea-Delivery: d1\r\nX-Gitea-Signature: 00\r\nContent-Length: 100\r\n\r\n{\"ref\":",
    )
    .await?;
    let (answer, took) = until_closed(&mut slow).await?;
    println!("partial body: answered after {took:?} (body timeout 1 s)");
    ensure!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    ensure!(answer.contains("BodyTimeout"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn at_the_connection_limit_the_oldest_idle_connection_makes_room() -> Result<()> {
    let server = start(Limits { header_read_timeout: Duration::from_secs(30), ..short() }).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&server.addr).await?);
        // In order: the first is the oldest.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fourth with a limit of 3: served, although the three say nothing for 30 s.
    let (status, _) = get(&server.addr, "/healthz").await?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The oldest idle one was closed for it, long before its header timeout.
    let (_, took) = until_closed(&mut held[0]).await?;
    println!("oldest idle connection closed after {took:?} (header timeout 30 s)");
    ensure!(took < Duration::from_secs(15), "the oldest idle connection was not closed to make room");
    Ok(())
}

/// Sends `GET path` on a new connection and reads the answer until the server closes it.
async fn get(addr: &str, path: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let (answer, _) = until_closed(&mut stream).await?;
    let status = answer.lines().next().unwrap_or("").to_owned();
    Ok((status, answer))
}

/// Opens an event stream and reads its response head.
async fn open_stream(addr: &str) -> Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
        ensure!(matches!(read, Ok(Ok(1))), "no response head in 10 s: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&head).into_owned()))
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_is_refused_at_once_with_retry_after() -> Result<()> {
    // Total limit: three busy connections (event streams), a fourth is answered 503.
    let server = start(Limits { header_read_timeout: Duration::from_secs(30), max_connections_per_peer: 10, ..short() }).await?;
    let mut busy = Vec::new();
    for _ in 0..3 {
        let (stream, head) = open_stream(&server.addr).await?;
        ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        busy.push(stream);
    }
    let (status, answer) = get(&server.addr, "/healthz").await?;
    ensure!(status.starts_with("HTTP/1.1 503"), "{answer}");
    ensure!(answer.to_ascii_lowercase().contains("retry-after: 5"), "{answer}");
    ensure!(answer.contains("TooManyConnections") && answer.contains("--max-connections"), "{answer}");
    // A freed place serves again.
    drop(busy.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = get(&server.addr, "/healthz").await?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Per-peer limit: two busy connections of this address, the third is answered 429.
    let server = start(Limits { max_connections: 10, max_connections_per_peer: 2, ..short() }).await?;
    let _held = [open_stream(&server.addr).await?, open_stream(&server.addr).await?];
    let (status, answer) = get(&server.addr, "/healthz").await?;
    ensure!(status.starts_with("HTTP/1.1 429"), "{answer}");
    ensure!(answer.contains("TooManyConnectionsFromPeer") && answer.contains("--max-connections-per-peer"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn event_streams_beyond_their_limits_are_refused_with_429_or_503() -> Result<()> {
    let limits =
        Limits { max_connections: 20, max_connections_per_peer: 20, max_event_streams: 10, max_event_streams_per_peer: 2, ..short() };
    let server = start(limits).await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (stream, head) = open_stream(&server.addr).await?;
        ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    let (mut third, head) = open_stream(&server.addr).await?;
    ensure!(head.starts_with("HTTP/1.1 429"), "{head}");
    ensure!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    ensure!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let (body, _) = until_closed(&mut third).await?;
    ensure!(body.contains("TooManyEventStreamsFromPeer") && body.contains("--max-event-streams-per-peer"), "{body}");
    // Other requests of the same peer are still served.
    let (status, _) = get(&server.addr, "/healthz").await?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");
    // An ended stream frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_again, head) = open_stream(&server.addr).await?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The total limit: 503.
    let limits = Limits { max_event_streams: 1, max_event_streams_per_peer: 5, ..limits };
    let server = start(limits).await?;
    let (_one, head) = open_stream(&server.addr).await?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut two, head) = open_stream(&server.addr).await?;
    ensure!(head.starts_with("HTTP/1.1 503"), "{head}");
    let (body, _) = until_closed(&mut two).await?;
    ensure!(body.contains("TooManyEventStreams") && body.contains("--max-event-streams "), "{body}");
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_idle_keep_alive_connections() -> Result<()> {
    let mut server = start(Limits { header_read_timeout: Duration::from_secs(60), ..short() }).await?;
    let mut kept = TcpStream::connect(&server.addr).await?;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await?;
    ensure!(&first == b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&first));
    if let Some(stop) = server.shutdown.take() {
        let _ = stop.send(());
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), &mut server.task).await;
    ensure!(stopped.is_ok(), "the server did not stop with a kept-alive connection open");
    Ok(())
}
