//! Predicates on single values written in the control repo: repo URLs,
//! credentials in URLs, commit ids, literals that look like secrets. The
//! checks in `validate.rs` use them (and re-export them), and so do the
//! commands that take such values from elsewhere.

/// Prefixes of well-known credential formats.
const SECRET_VALUE_PREFIXES: [&str; 9] = ["sk-", "ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "AKIA"];

/// Whether a literal looks like a credential.
pub fn looks_like_secret_value(value: &str) -> bool {
    SECRET_VALUE_PREFIXES.iter().any(|p| value.starts_with(p) && value.len() >= p.len() + 12) || value.contains("-----BEGIN")
}

/// Whether a URL carries credentials: any user part of an `http(s)://` URL
/// (tokens travel as the user name), or a `user:password@` of any scheme.
pub fn url_has_credentials(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _host)) = authority.rsplit_once('@') else { return false };
    matches!(scheme, "http" | "https") || userinfo.contains(':')
}

/// Why a target-repo URL is refused, if it is.
pub fn repo_url_problem(url: &str) -> Option<&'static str> {
    if url.trim().is_empty() {
        return Some("it is empty");
    }
    if url.contains("::") && !url.contains("://") {
        return Some("`<transport>::` remote helpers are refused: they can run commands");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains white space or control characters");
    }
    if url.starts_with('-') {
        return Some("it starts with `-` and would be read as a git option");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = host.rsplit('@').next().unwrap_or("");
                if host.is_empty() || host.starts_with(':') {
                    Some("it has no host")
                } else if rest.len() <= host.len() + 1 + rest.find(host).unwrap_or(0) {
                    Some("it names no repository path")
                } else {
                    None
                }
            }
            "file" => (rest.is_empty() || rest == "/").then_some("it names no path"),
            _ => Some("the scheme is not one git clones from here (https, http, ssh, git, file)"),
        };
    }
    if url.starts_with("./") || url.starts_with("../") || url.starts_with('/') {
        return None;
    }
    // scp-like: [user@]host:path
    if let Some((host, path)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        return None;
    }
    Some("it is neither a URL, an scp-like `git@host:path`, nor a `./` or `../` relative path")
}

/// Whether `commit` is a full git object id as Hadron writes it: 40 lower-case hex digits.
pub fn is_commit_id(commit: &str) -> bool {
    commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
