//! The one function that hides credentials written into URLs.
//!
//! Every message that can carry a remote URL (git's own output, errors, logs,
//! status conditions) passes through [`url_credentials`] before a person or a
//! file sees it. Secret *values* a worker knows are hidden separately, by the
//! worker's log, which holds them.

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

#[cfg(test)]
mod tests {
    use super::url_credentials;

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
