//! Text made safe for the eyes that read it.
//!
//! Every message that can carry a remote URL (git's own output, errors, logs,
//! status conditions) passes through [`url_credentials`] before a person or a
//! file sees it. Secret *values* a worker knows are hidden separately, by the
//! worker's log, which holds them.
//!
//! Every value Hadron prints to a terminal (`hadron up`, `validate`, `plan`,
//! `approve`, `ci-status`) passes through [`inert_for_terminal`]: a request
//! name, an agent's summary or git's stderr can hold an ESC, a `\r` or an
//! OSC 52 sequence, and none of them may reach the terminal as a control.

use std::borrow::Cow;

/// `text` with the user-info part of every `scheme://user[:password]@host`
/// replaced by `***` (`https://***@host/...`). Tokens travel as user names, so
/// the whole user-info goes, not only the password. scp-like addresses
/// (`git@host:path`) have no `://` and are kept: their user is not a secret.
pub fn url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#' | '\'' | '"' | '`') || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Whether a terminal could act on `c` instead of showing it: every C0
/// control (`\n`, `\r` and `\t` included), DEL, every C1 control (CSI
/// `U+009B`, OSC `U+009D`, …) and the bidirectional overrides and isolates
/// that reorder what is shown.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal would act on written as visible
/// text, Rust-style: ESC as `\u{1b}`, `\r` as `\r`, `\n` as `\n`, `\t` as
/// `\t`, DEL as `\u{7f}`, CSI as `\u{9b}`. The line breaks Hadron writes
/// itself go around the values, never through this. Borrowed when there is
/// nothing to escape.
pub fn inert_for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_terminal(c) {
            // `escape_debug` of a control char is `\n`, `\r`, `\t` or `\u{…}`.
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{inert_for_terminal, url_credentials};

    /// No byte a terminal acts on: C0 (but the line breaks the caller adds), DEL, C1 in UTF-8.
    fn has_raw_control(s: &str) -> bool {
        s.chars().any(|c| c.is_control())
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let plain = "add-login: Running -> Succeeded [implement] ünïcödé ✓";
        assert!(matches!(inert_for_terminal(plain), std::borrow::Cow::Borrowed(_)));
        assert_eq!(inert_for_terminal(plain), plain);
    }

    #[test]
    fn every_c0_control_and_del_becomes_visible() {
        assert_eq!(inert_for_terminal("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(inert_for_terminal("bell\u{7}"), "bell\\u{7}");
        assert_eq!(inert_for_terminal("x\ry"), "x\\ry");
        assert_eq!(inert_for_terminal("x\ny"), "x\\ny");
        assert_eq!(inert_for_terminal("x\ty"), "x\\ty");
        assert_eq!(inert_for_terminal("\0"), "\\0");
        assert_eq!(inert_for_terminal("del\u{7f}"), "del\\u{7f}");
        for b in (0u8..0x20).chain([0x7f]) {
            let s = format!("<{}>", char::from(b));
            let got = inert_for_terminal(&s);
            assert!(!has_raw_control(&got), "{b:#x} -> {got:?}");
            assert!(got.starts_with("<\\") && got.ends_with('>'), "{b:#x} -> {got:?}");
        }
    }

    #[test]
    fn c1_controls_in_utf8_become_visible() {
        // CSI (U+009B) and OSC (U+009D) as UTF-8: 0xC2 0x9B, 0xC2 0x9D.
        assert_eq!("\u{9b}".as_bytes(), [0xc2, 0x9b]);
        assert_eq!(inert_for_terminal("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        for c in '\u{80}'..='\u{9f}' {
            let got = inert_for_terminal(&c.to_string()).into_owned();
            assert!(!has_raw_control(&got) && got.starts_with("\\u{"), "{:#x} -> {got:?}", c as u32);
        }
        assert_eq!(inert_for_terminal("\u{202e}evil"), "\\u{202e}evil");
    }

    #[test]
    fn osc52_and_a_forged_ok_line_are_shown_not_acted_on() {
        let osc52 = "done\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\u{7}";
        let got = inert_for_terminal(osc52);
        assert_eq!(got, "done\\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\\u{7}");
        let forged = "bad\r\u{1b}[2Kok: 3 files\nok: 1 request";
        let got = inert_for_terminal(forged);
        assert!(!has_raw_control(&got), "{got:?}");
        assert_eq!(got.lines().count(), 1, "one line: {got:?}");
        assert!(got.starts_with("bad\\r"), "{got:?}");
    }

    #[test]
    fn hides_every_user_info_and_keeps_the_rest() {
        assert_eq!(
            url_credentials("fatal: unable to access 'https://bob:s3cret@git.example.com/acme/ctl.git/': 403"),
            "fatal: unable to access 'https://***@git.example.com/acme/ctl.git/': 403"
        );
        assert_eq!(url_credentials("https://tok@h"), "https://***@h");
        assert_eq!(url_credentials("https://u:p@h?x=1"), "https://***@h?x=1");
        assert_eq!(url_credentials("file:///srv/x.git and ssh://git@h/x"), "file:///srv/x.git and ssh://***@h/x");
        let two = url_credentials("https://tok@h/x then https://u:p@h2/y");
        assert!(!two.contains("tok") && !two.contains("u:p"), "{two}");
        assert_eq!(url_credentials("git@host:acme/app.git"), "git@host:acme/app.git");
        assert_eq!(url_credentials("no url here"), "no url here");
        assert_eq!(url_credentials("ends with ://"), "ends with ://");
    }
}
