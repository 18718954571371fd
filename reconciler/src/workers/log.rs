//! `worker.log`: the worker's log, with every secret value replaced by `***`,
//! and bounded.
//!
//! Hadron's own lines ([`Log::line`]) always go through, at once. What other
//! programs print (the agent, git: [`Log::write`], [`Log::copy_output`]) is
//! kept in two parts: the first [`OUTPUT_HEAD_BYTES`] are written through;
//! after that, only the last [`OUTPUT_TAIL_BYTES`] are held in memory and
//! written, after a marker line saying how many bytes and lines were dropped
//! there, once the output ends: when the last stream [`Log::copy_output`]
//! reads closes, at [`Log::flush_output`], at Hadron's next line when no
//! stream is being read, or when the log is dropped. Hadron's lines while a
//! stream is read do not write what is held (else an agent that makes Hadron
//! say something, a refused connection, between two prints would have every
//! print kept). docs/worker-output.md describes the caps.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;

use crate::time::now_rfc3339;

/// Output of other programs written through at the start of the log.
pub(super) const OUTPUT_HEAD_BYTES: usize = 256 << 10;
/// Output kept from the end: held in memory, written at Hadron's next line.
pub(super) const OUTPUT_TAIL_BYTES: usize = 1 << 20;
/// Longest piece of one output line written as one log line; a longer line
/// is split (so a line without end costs no more memory than this).
pub(super) const OUTPUT_LINE_BYTES: usize = 64 << 10;
/// What [`Log::copy_output`] reads at once.
const READ_CHUNK: usize = 64 << 10;

/// `worker.log`, with every secret value replaced by `***`.
pub(super) struct Log {
    state: Mutex<State>,
    secrets: Vec<String>,
}

/// The file and what is held back of the output.
struct State {
    file: File,
    /// Output bytes still written through before the head closes.
    head_left: usize,
    /// Output after the head, redacted, oldest first: at most [`OUTPUT_TAIL_BYTES`].
    tail: VecDeque<String>,
    tail_bytes: usize,
    /// Output dropped since the last flush.
    dropped_bytes: u64,
    dropped_lines: u64,
    /// Streams [`Log::copy_output`] is reading.
    open_streams: usize,
}

impl State {
    /// Output (already redacted): through while the head lasts, else into the tail.
    fn output(&mut self, text: String) {
        if self.tail.is_empty() && text.len() <= self.head_left {
            self.head_left -= text.len();
            let _ = self.file.write_all(text.as_bytes());
            return;
        }
        // The head is closed: later output, however short, goes behind what
        // is held back, so the file keeps the order it was printed in.
        self.head_left = 0;
        let text = if text.len() > OUTPUT_TAIL_BYTES {
            let cut = text.ceil_char_boundary(text.len() - OUTPUT_TAIL_BYTES);
            self.drop_text(&text[..cut]);
            text[cut..].to_owned()
        } else {
            text
        };
        self.tail_bytes += text.len();
        self.tail.push_back(text);
        while self.tail_bytes > OUTPUT_TAIL_BYTES {
            let Some(old) = self.tail.pop_front() else { break };
            self.tail_bytes -= old.len();
            self.drop_text(&old);
        }
    }

    fn drop_text(&mut self, text: &str) {
        self.dropped_bytes += text.len() as u64;
        self.dropped_lines += bytecount_newlines(text.as_bytes());
    }

    /// Writes what is held back: the marker when something was dropped, then the tail.
    fn flush(&mut self) {
        if self.dropped_bytes > 0 {
            let marker = format!(
                "[{}] … {} bytes ({} lines) of output dropped here: worker.log keeps the first {} KiB and the last {} KiB \
                 of what the agent and git print (docs/worker-output.md)\n",
                now_rfc3339(),
                self.dropped_bytes,
                self.dropped_lines,
                OUTPUT_HEAD_BYTES >> 10,
                OUTPUT_TAIL_BYTES >> 10,
            );
            let _ = self.file.write_all(marker.as_bytes());
            self.dropped_bytes = 0;
            self.dropped_lines = 0;
        }
        for text in self.tail.drain(..) {
            let _ = self.file.write_all(text.as_bytes());
        }
        self.tail_bytes = 0;
    }
}

fn bytecount_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

impl Log {
    pub(super) fn open(path: &Path, mut secrets: Vec<String>) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // Longest first, so a secret containing another is fully replaced.
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let state = State {
            file,
            head_left: OUTPUT_HEAD_BYTES,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped_bytes: 0,
            dropped_lines: 0,
            open_streams: 0,
        };
        Ok(Log { state: Mutex::new(state), secrets })
    }

    pub(super) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// Output of another program (the agent, git), redacted and bounded:
    /// see the module's documentation.
    pub(super) fn write(&self, text: &str) {
        let text = self.redact(text);
        if let Ok(mut state) = self.state.lock() {
            state.output(text);
        }
    }

    /// One line of Hadron's own, timestamped: always written at once; after
    /// what was held back of the output unless a stream is still being read.
    pub(super) fn line(&self, text: &str) {
        let text = self.redact(&format!("[{}] {text}\n", now_rfc3339()));
        if let Ok(mut state) = self.state.lock() {
            if state.open_streams == 0 {
                state.flush();
            }
            let _ = state.file.write_all(text.as_bytes());
        }
    }

    /// Writes what is held back of the output now (the run is over, even if
    /// a detached process still holds a stream open).
    pub(super) fn flush_output(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.flush();
        }
    }

    /// Copies one output stream of the agent into the log until it ends,
    /// in bounded memory: one log line per output line, tagged
    /// `[agent <tag>]`, a line longer than [`OUTPUT_LINE_BYTES`] split into
    /// pieces (`[agent <tag> …]` for the rest), never inside a secret or a
    /// character. Returns the last `keep` bytes read, unredacted (for the
    /// usage report on standard output; 0 keeps nothing). When the last
    /// stream being read ends, what is held back is written.
    pub(super) fn copy_output<R: Read>(&self, mut stream: R, tag: &str, keep: usize) -> Vec<u8> {
        let mut kept: VecDeque<u8> = VecDeque::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut continued = false;
        if let Ok(mut state) = self.state.lock() {
            state.open_streams += 1;
        }
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let data = &chunk[..n];
            if keep > 0 {
                kept.extend(data);
                let excess = kept.len().saturating_sub(keep);
                kept.drain(..excess);
            }
            pending.extend_from_slice(data);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                self.output_piece(tag, &pending[start..start + end + 1], continued);
                continued = false;
                start += end + 1;
            }
            pending.drain(..start);
            while pending.len() > OUTPUT_LINE_BYTES {
                let cut = self.safe_cut(&pending, OUTPUT_LINE_BYTES);
                self.output_piece(tag, &pending[..cut], continued);
                continued = true;
                pending.drain(..cut);
            }
        }
        if !pending.is_empty() {
            self.output_piece(tag, &pending, continued);
        }
        if let Ok(mut state) = self.state.lock() {
            state.open_streams = state.open_streams.saturating_sub(1);
            if state.open_streams == 0 {
                state.flush();
            }
        }
        kept.into()
    }

    fn output_piece(&self, tag: &str, bytes: &[u8], continued: bool) {
        let text = String::from_utf8_lossy(bytes);
        let newline = if text.ends_with('\n') { "" } else { "\n" };
        let more = if continued { " …" } else { "" };
        self.write(&format!("[agent {tag}{more}] {text}{newline}"));
    }

    /// Where to split `buf` at `want` or before: not inside a UTF-8
    /// character, nor inside a secret (which the redaction of either piece
    /// alone would miss).
    fn safe_cut(&self, buf: &[u8], want: usize) -> usize {
        let mut cut = want.min(buf.len());
        while cut > 0 && cut < buf.len() && buf[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        loop {
            let crossing = self.secrets.iter().find_map(|s| {
                let s = s.as_bytes();
                (cut.saturating_sub(s.len() - 1)..cut).find(|&at| at + s.len() > cut && buf[at..].starts_with(s))
            });
            match crossing {
                // A secret at the very start is as long as a piece: cut it anyway.
                Some(0) | None => return if cut == 0 { want.min(buf.len()) } else { cut },
                Some(at) => cut = at,
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            state.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        String::from_utf8(std::fs::read(path).expect("the log exists")).expect("the log is UTF-8")
    }

    #[test]
    fn output_keeps_its_head_and_tail_with_a_marker_and_hadrons_lines_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.log");
        let log = Log::open(&path, vec!["s3cr3t".into()]).expect("open");
        log.line("worker starts");
        let lines = 100_000;
        for i in 0..lines {
            log.write(&format!("[agent out] line {i} s3cr3t {}\n", "x".repeat(60)));
        }
        log.line("agent finished");
        log.write("[git] pushed\n");
        log.line("result: Succeeded");
        drop(log);
        let text = read(&path);
        let output: usize = (0..lines).map(|i| format!("[agent out] line {i} *** {}\n", "x".repeat(60)).len()).sum();
        assert!(output > 4 * (OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES), "the test prints more than is kept");
        assert!(text.len() < OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES + 1024, "{} bytes", text.len());
        assert!(!text.contains("s3cr3t"), "secrets are redacted, the tail's too");
        let order = [
            "worker starts",
            "line 0 ***",
            "bytes (",
            "lines) of output dropped here",
            "line 99999 ***",
            "agent finished",
            "[git] pushed",
            "result: Succeeded",
        ];
        let mut from = 0;
        for want in order {
            let at = text[from..].find(want).unwrap_or_else(|| panic!("{want:?} after byte {from}"));
            from += at + want.len();
        }
        let marker = text.lines().find(|l| l.contains("dropped here")).expect("a marker line");
        let dropped: u64 = marker.split(" … ").nth(1).and_then(|m| m.split(' ').next()).and_then(|n| n.parse().ok()).expect("a count");
        let kept_output = text.lines().filter(|l| l.starts_with("[agent out]")).map(|l| l.len() as u64 + 1).sum::<u64>();
        assert_eq!(dropped + kept_output, output as u64, "what is kept and what is dropped add up: {marker}");
    }

    #[test]
    fn a_short_output_is_kept_whole_and_unmarked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.log");
        let log = Log::open(&path, vec![]).expect("open");
        for i in 0..10 {
            log.write(&format!("[agent err] {i}\n"));
        }
        log.line("done");
        drop(log);
        let text = read(&path);
        assert_eq!(text.lines().filter(|l| l.starts_with("[agent err]")).count(), 10);
        assert!(!text.contains("dropped"), "{text}");
    }

    #[test]
    fn copy_output_splits_endless_lines_outside_secrets_and_keeps_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.log");
        let secret = "TOPSECRETVALUE";
        let log = Log::open(&path, vec![secret.into()]).expect("open");
        // One line of 3 MiB without a newline, a secret straddling each
        // natural cut point and a multibyte character at another.
        let mut input = Vec::new();
        while input.len() < 3 << 20 {
            let next_cut = (input.len() / OUTPUT_LINE_BYTES + 1) * OUTPUT_LINE_BYTES;
            input.resize(next_cut - 5, b'a');
            input.extend_from_slice(secret.as_bytes());
            input.extend_from_slice("é".repeat(10).as_bytes());
        }
        input.extend_from_slice(b"\nlast line\n");
        let kept = log.copy_output(input.as_slice(), "out", 1000);
        assert_eq!(kept, input[input.len() - 1000..], "the last `keep` bytes");
        log.line("agent finished");
        drop(log);
        let text = read(&path);
        assert!(!text.contains(secret) && !text.contains("TOPSEC"), "no secret, whole or cut, reaches the log");
        assert!(text.contains("***"));
        assert!(!text.contains('\u{FFFD}'), "no character is cut in two");
        assert!(text.lines().all(|l| l.len() <= OUTPUT_LINE_BYTES + 64), "every log line is bounded");
        assert!(text.contains("[agent out …] "), "the rest of a split line is marked");
        assert!(text.contains("[agent out] last line\n") && text.contains("dropped here"), "{}", &text[text.len() - 200..]);
        assert!(text.len() < OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES + 2 * OUTPUT_LINE_BYTES, "{} bytes", text.len());
    }

    /// Output that makes Hadron say something (a refused connection) before
    /// every chunk it gives.
    struct Chatty<'a> {
        log: &'a Log,
        chunks: usize,
    }

    impl Read for Chatty<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.chunks == 0 {
                return Ok(0);
            }
            self.chunks -= 1;
            self.log.line("egress: refused example.com:443");
            let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
            let n = buf.len() / line.len() * line.len();
            for piece in buf[..n].chunks_mut(line.len()) {
                piece.copy_from_slice(line);
            }
            Ok(n)
        }
    }

    #[test]
    fn hadrons_lines_while_a_stream_is_read_do_not_write_what_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.log");
        let log = Log::open(&path, vec![]).expect("open");
        let chunks = 200; // 200 × 64 KiB: 12.5 MiB of output
        log.copy_output(Chatty { log: &log, chunks }, "out", 0);
        let size = std::fs::metadata(&path).expect("the log").len() as usize;
        let text = read(&path);
        assert_eq!(text.matches("egress: refused").count(), chunks, "every line of Hadron's is written");
        assert_eq!(text.matches("dropped here").count(), 1, "one cut, not one per line of Hadron's");
        assert!(size < OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES + chunks * 80 + 1024, "{size} bytes");
        assert!(text.ends_with("abcde\n"), "the tail is written when the stream ends, before the log is dropped");
        log.line("agent finished");
        assert!(read(&path).ends_with("agent finished\n"));
    }
}
