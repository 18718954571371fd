//! A small W3C WebDriver client for the browser tests: Debian's `chromium`
//! driven headless through its `chromedriver`, spoken to in plain HTTP/1.1
//! on loopback (no TLS, no extra crate).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian installs them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian installs it.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser and its driver are installed.
pub fn available() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

/// One HTTP exchange with the driver: (status, JSON body).
fn exchange(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )?;
    // Read the head, then as much body as it announces (the driver may
    // keep the connection open whatever the request said).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the driver closed the connection before its answer"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other("no status"))?;
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = raw[split + 4..].to_vec();
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
            body.truncate(length);
        }
        None => {
            // Chunked or close-delimited: up to the last chunk or the end.
            while !body.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
            if head.contains("transfer-encoding: chunked") {
                body = unchunk(&body);
            }
        }
    }
    let value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).map_err(std::io::Error::other)? };
    Ok((status, value))
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// A running `chromedriver` with one headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session with the
    /// browser's console log kept (for [`Browser::console_errors`]).
    pub fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("because chromedriver is installed (apt-get install chromium chromium-driver)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"] },
            "goog:loggingPrefs": { "browser": "ALL" }
        } } });
        let (status, value) = exchange(port, "POST", "/session", Some(&caps)).expect("chromedriver answers");
        assert_eq!(status, 200, "a session: {value}");
        let session = value["value"]["sessionId"].as_str().expect("a session id").to_owned();
        Browser { driver, port, session }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, value) = exchange(self.port, method, &path, body.as_ref()).expect("chromedriver answers");
        assert_eq!(status, 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Waits (up to `limit`) until `script` returns `true`; panics with `why` otherwise.
    pub fn wait_until(&self, script: &str, limit: Duration, why: &str) {
        let started = Instant::now();
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            assert!(started.elapsed() < limit, "{why}: `{script}` not true after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resizes the window (a phone: 390 × 844).
    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", "/screenshot", None);
        decode_base64(b64.as_str().expect("base64 text"))
    }

    /// The browser console's errors since the last call (chromedriver's log).
    pub fn console_errors(&self) -> Vec<String> {
        let entries = self.call("POST", "/se/log", Some(json!({ "type": "browser" })));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = exchange(self.port, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.bytes().filter(|b| *b != b'=' && !b.is_ascii_whitespace()) {
        let Some(v) = ALPHABET.iter().position(|a| *a == byte) else { continue };
        acc = (acc << 6) | u32::try_from(v).unwrap_or(0);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or(0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_chunks_decode() {
        assert_eq!(super::decode_base64("aGFkcm9u"), b"hadron");
        assert_eq!(super::decode_base64("aGFkcm9uIQ=="), b"hadron!");
        assert_eq!(super::unchunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
