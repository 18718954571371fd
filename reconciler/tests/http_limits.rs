//! The HTTP server over real loopback TCP: idle, half-sent and slow clients
//! are cut off by the header and body timeouts, and connections beyond the
//! limit are closed at accept, so slow clients cannot exhaust the server.

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
    Limits { header_read_timeout: Duration::from_secs(1), body_read_timeout: Duration::from_secs(1), max_connections: 3 }
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
async fn connections_beyond_the_limit_are_closed_at_once_and_others_still_served() -> Result<()> {
    let server = start(Limits { header_read_timeout: Duration::from_secs(30), ..short() }).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&server.addr).await?);
    }
    // Give the server time to accept the three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(&server.addr).await?;
    let (_, took) = until_closed(&mut extra).await?;
    println!("fourth connection with a limit of 3: closed after {took:?} (header timeout 30 s)");
    ensure!(took < Duration::from_secs(15), "the extra connection waited for a timeout instead of being refused");
    // A freed slot serves again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ok = TcpStream::connect(&server.addr).await?;
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let (answer, _) = until_closed(&mut ok).await?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
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
